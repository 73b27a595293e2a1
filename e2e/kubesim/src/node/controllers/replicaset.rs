//! The ReplicaSet controller's decision for one ReplicaSet: pods to create or delete and the status
//! to write. Pure; the caller lists pods, executes the actions and supplies fresh pod names.

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::deployment::controller_ref;
use super::rollout::rs_spec_replicas;

/// One write the ReplicaSet controller wants done.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplicaSetAction {
    CreatePod(Box<Pod>),
    DeletePod {
        name: String,
    },
    WriteStatus(Box<ReplicaSetStatus>),
    Event {
        reason: &'static str,
        message: String,
    },
}

/// Whether a pod still counts: not being deleted and not finished.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), Some("Succeeded" | "Failed"))
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// When the pod became Ready, if it is Ready now and the time is known.
pub fn ready_since(pod: &Pod) -> Option<&Time> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()
}

/// Whether the pod's `Ready` condition is `True`.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready_seconds` (a pod's "available" in controller terms).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: &Time) -> bool {
    if !pod_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(pod)
        .is_none_or(|t| t.0.as_second() + i64::from(min_ready_seconds) <= now.0.as_second())
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

/// Deletion preference (smaller goes first): pending before running, not ready before ready,
/// more restarts before fewer, newer before older — the gist of `ActivePodsWithRanks`.
fn deletion_rank(pod: &Pod) -> (u8, bool, i32, std::cmp::Reverse<Option<Time>>) {
    let phase_rank = match phase(pod) {
        None | Some("Pending") => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    (
        phase_rank,
        pod_ready(pod),
        -restarts(pod),
        std::cmp::Reverse(pod.metadata.creation_timestamp.clone()),
    )
}

/// A pod for the ReplicaSet's template with the given name.
pub fn build_pod(rs: &ReplicaSet, name: String) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: rs.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            owner_references: Some(vec![controller_ref("apps/v1", "ReplicaSet", &rs.metadata)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Decides the writes for one ReplicaSet given the pods it controls.
/// `fresh_name` yields a new pod name (`<rs>-<suffix>`) per call.
pub fn plan(
    rs: &ReplicaSet,
    owned: &[&Pod],
    now: &Time,
    fresh_name: &mut dyn FnMut() -> String,
) -> Vec<ReplicaSetAction> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let mut active: Vec<&Pod> = owned.iter().copied().filter(|p| is_active(p)).collect();
    let want = usize::try_from(rs_spec_replicas(rs)).unwrap_or(0);
    let mut actions = Vec::new();
    if active.len() < want {
        for _ in active.len()..want {
            let pod = build_pod(rs, fresh_name());
            let message = format!(
                "Created pod: {}",
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            actions.push(ReplicaSetAction::CreatePod(Box::new(pod)));
            actions.push(ReplicaSetAction::Event {
                reason: "SuccessfulCreate",
                message,
            });
        }
    } else if active.len() > want {
        active.sort_by_key(|p| deletion_rank(p));
        for pod in &active[..active.len() - want] {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let message = format!("Deleted pod: {name}");
            actions.push(ReplicaSetAction::DeletePod { name });
            actions.push(ReplicaSetAction::Event {
                reason: "SuccessfulDelete",
                message,
            });
        }
    }
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let previous = rs.status.clone().unwrap_or_default();
    let status = ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })),
        ready_replicas: Some(count(&pod_ready)),
        available_replicas: Some(count(&|p| is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: previous.conditions.clone(),
        terminating_replicas: None,
    };
    if rs.status.as_ref() != Some(&status) {
        actions.push(ReplicaSetAction::WriteStatus(Box::new(status)));
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus, PodTemplateSpec};

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap_or_default())
    }

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("ns".into()),
                uid: Some("rs-uid".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                template: Some(PodTemplateSpec::default()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, ready: bool, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(t(created)),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(t(created)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn names() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("web-abc-{n}")
        }
    }

    #[test]
    fn missing_pods_are_created_with_a_controller_reference() {
        // Two wanted, none present → two pods owned by the ReplicaSet.
        let actions = plan(&rs(2), &[], &t(10), &mut names());
        let pods: Vec<&Pod> = actions
            .iter()
            .filter_map(|a| match a {
                ReplicaSetAction::CreatePod(p) => Some(p.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(pods.len(), 2);
        let owner = &pods[0]
            .metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].uid.clone());
        assert_eq!(owner.as_deref(), Some("rs-uid"));
    }

    #[test]
    fn surplus_pods_are_deleted_unready_and_newest_first() {
        // Scale-down removes pods that serve nothing before pods that do.
        let (a, b, c) = (pod("a", true, 1), pod("b", false, 2), pod("c", true, 3));
        let actions = plan(&rs(1), &[&a, &b, &c], &t(10), &mut names());
        let deleted: Vec<&str> = actions
            .iter()
            .filter_map(|x| match x {
                ReplicaSetAction::DeletePod { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, vec!["b", "c"]);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        // A pod ready for 5s is not available under minReadySeconds=10.
        let p = pod("a", true, 100);
        assert!(!is_available(&p, 10, &t(105)));
        assert!(is_available(&p, 10, &t(110)));
        assert!(is_available(&p, 0, &t(100)));
    }

    #[test]
    fn status_counts_ready_pods_and_is_not_rewritten_when_unchanged() {
        // Status reflects the pods, and an unchanged status is not written again.
        let (a, b) = (pod("a", true, 1), pod("b", false, 2));
        let mut r = rs(2);
        let actions = plan(&r, &[&a, &b], &t(10), &mut names());
        let Some(ReplicaSetAction::WriteStatus(s)) = actions.last().cloned() else {
            panic!("expected status, got {actions:?}");
        };
        assert_eq!(
            (s.replicas, s.ready_replicas, s.available_replicas),
            (2, Some(1), Some(1))
        );
        r.status = Some(*s);
        assert!(plan(&r, &[&a, &b], &t(10), &mut names()).is_empty());
    }
}
