//! Rollout arithmetic of the Deployment controller: `maxSurge`/`maxUnavailable` resolution and the
//! replica counts a rolling update moves through, as `k8s.io/kubernetes/pkg/controller/deployment`
//! computes them. Pure functions over numbers and typed objects; no client here.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Annotation holding a ReplicaSet's (and Deployment's) rollout revision.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Annotation recording the Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// Annotation recording replicas + maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// Label distinguishing the ReplicaSets (and pods) of different templates of one Deployment.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// `spec.replicas` of a Deployment (defaults to 1 as the API server would).
pub fn desired_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// `spec.replicas` of a ReplicaSet.
pub fn rs_spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// `(status.replicas, readyReplicas, availableReplicas)` of a ReplicaSet.
pub fn rs_status_counts(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// The revision annotation of a ReplicaSet, 0 when missing or malformed.
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether the Deployment uses the `Recreate` strategy (the default is `RollingUpdate`).
pub fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// Resolves an int-or-percent against `total`, rounding percentages up or down.
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let prod = pct * i64::from(total);
            let v = if round_up {
                (prod + 99).div_euclid(100)
            } else {
                prod.div_euclid(100)
            };
            i32::try_from(v).unwrap_or(i32::MAX)
        }
    }
}

/// `(maxSurge, maxUnavailable)` as absolute numbers; both zero would deadlock, so unavailable
/// becomes 1 then (the real controller's `ResolveFenceposts`).
pub fn resolve_fenceposts(d: &Deployment) -> (i32, i32) {
    let desired = desired_replicas(d);
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let default = IntOrString::String("25%".into());
    let surge = rolling
        .and_then(|r| r.max_surge.as_ref())
        .unwrap_or(&default);
    let unavailable = rolling
        .and_then(|r| r.max_unavailable.as_ref())
        .unwrap_or(&default);
    let surge = scaled_value(surge, desired, true);
    let mut unavailable = scaled_value(unavailable, desired, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// The number of pods that may be unavailable (0 for Recreate or zero replicas).
pub fn max_unavailable(d: &Deployment) -> i32 {
    let desired = desired_replicas(d);
    if is_recreate(d) || desired == 0 {
        return 0;
    }
    resolve_fenceposts(d).1.min(desired)
}

/// How far the new ReplicaSet may be scaled up now: up to replicas + maxSurge pods in total.
pub fn new_rs_replicas(d: &Deployment, all_spec_replicas: i32, new_spec_replicas: i32) -> i32 {
    let desired = desired_replicas(d);
    if is_recreate(d) {
        return desired;
    }
    let (surge, _) = resolve_fenceposts(d);
    let max_total = desired + surge;
    if all_spec_replicas >= max_total {
        return new_spec_replicas;
    }
    let scale_up = (max_total - all_spec_replicas).min(desired - new_spec_replicas);
    new_spec_replicas + scale_up.max(0)
}

/// A ReplicaSet to scale to a number of replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scale {
    pub name: String,
    pub replicas: i32,
}

/// Scale-downs of old ReplicaSets for a rolling update: first unhealthy replicas, then available
/// ones, never taking availability below `replicas - maxUnavailable`. `old` must be sorted oldest
/// first.
pub fn scale_down_old(d: &Deployment, new: &ReplicaSet, old: &[&ReplicaSet]) -> Vec<Scale> {
    let old_pods: i32 = old.iter().map(|rs| rs_spec_replicas(rs)).sum();
    if old_pods == 0 {
        return Vec::new();
    }
    let desired = desired_replicas(d);
    let all_pods = old_pods + rs_spec_replicas(new);
    let min_available = desired - max_unavailable(d);
    let new_unavailable = rs_spec_replicas(new) - rs_status_counts(new).2;
    let mut max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut replicas: Vec<i32> = old.iter().map(|rs| rs_spec_replicas(rs)).collect();
    // Unhealthy replicas first: they do not count towards availability.
    for (i, rs) in old.iter().enumerate() {
        if max_scaled_down <= 0 {
            break;
        }
        let available = rs_status_counts(rs).2;
        if replicas[i] == 0 || available >= replicas[i] {
            continue;
        }
        let count = max_scaled_down.min(replicas[i] - available);
        replicas[i] -= count;
        max_scaled_down -= count;
    }
    // Then available ones, keeping minAvailable.
    let available_total: i32 =
        old.iter().map(|rs| rs_status_counts(rs).2).sum::<i32>() + rs_status_counts(new).2;
    if available_total > min_available {
        let mut budget = available_total - min_available;
        for slot in replicas.iter_mut() {
            if budget <= 0 {
                break;
            }
            if *slot == 0 {
                continue;
            }
            let count = (*slot).min(budget);
            *slot -= count;
            budget -= count;
        }
    }
    old.iter()
        .zip(replicas)
        .filter(|(rs, r)| rs_spec_replicas(rs) != *r)
        .map(|(rs, r)| Scale {
            name: rs.metadata.name.clone().unwrap_or_default(),
            replicas: r,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetSpec, ReplicaSetStatus,
        RollingUpdateDeployment,
    };

    pub(crate) fn deployment(
        replicas: i32,
        surge: IntOrString,
        unavail: IntOrString,
    ) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavail),
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn rs(name: &str, spec: i32, available: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(spec),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas: spec,
                available_replicas: Some(available),
                ready_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        // 25% of 3 is a surge of 1 and 0 unavailable, as the real controller resolves it.
        let d = deployment(
            3,
            IntOrString::String("25%".into()),
            IntOrString::String("25%".into()),
        );
        assert_eq!(resolve_fenceposts(&d), (1, 0));
        assert_eq!(max_unavailable(&d), 0);
    }

    #[test]
    fn zero_surge_and_zero_unavailable_become_one_unavailable() {
        // A rollout must be able to make progress even when both knobs are zero.
        let d = deployment(3, IntOrString::Int(0), IntOrString::Int(0));
        assert_eq!(resolve_fenceposts(&d), (0, 1));
    }

    #[test]
    fn new_rs_never_exceeds_replicas_plus_surge() {
        // With 3 old pods, surge 1: the new ReplicaSet may grow by one pod only.
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
        assert_eq!(new_rs_replicas(&d, 3, 0), 1);
        assert_eq!(new_rs_replicas(&d, 4, 1), 1);
        // Scaling up with no old pods goes straight to replicas.
        assert_eq!(new_rs_replicas(&d, 1, 1), 3);
    }

    #[test]
    fn old_replicas_scale_down_only_as_new_ones_become_available() {
        // maxUnavailable 0: an old pod may go only once a new one is available.
        let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
        let old = rs("old", 3, 3);
        let new_unready = rs("new", 1, 0);
        assert!(scale_down_old(&d, &new_unready, &[&old]).is_empty());
        let new_ready = rs("new", 1, 1);
        assert_eq!(
            scale_down_old(&d, &new_ready, &[&old]),
            vec![Scale {
                name: "old".into(),
                replicas: 2
            }]
        );
    }

    #[test]
    fn unhealthy_old_replicas_go_first() {
        // Old pods that are not available are removed before healthy ones and regardless of them.
        let d = deployment(2, IntOrString::Int(0), IntOrString::Int(1));
        let older = rs("older", 1, 0);
        let old = rs("old", 2, 2);
        let new = rs("new", 0, 0);
        let scales = scale_down_old(&d, &new, &[&older, &old]);
        assert_eq!(
            scales,
            vec![
                Scale {
                    name: "older".into(),
                    replicas: 0
                },
                Scale {
                    name: "old".into(),
                    replicas: 1
                }
            ]
        );
    }
}
