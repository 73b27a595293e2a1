//! The Deployment controller's decision for one Deployment: which ReplicaSets to create, scale or
//! delete, and the status to write. A pure function of the Deployment, the ReplicaSets it owns and
//! their pods; the caller executes the returned actions. No client here.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use super::deployment_status as status;
use super::rollout::{
    desired_replicas, is_recreate, new_rs_replicas, resolve_fenceposts, revision, rs_spec_replicas,
    rs_status_counts, scale_down_old, DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION,
    POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION,
};
use crate::node::hash::{semantic, template_hash};

/// One write the Deployment controller wants done.
#[derive(Clone, Debug, PartialEq)]
pub enum DeploymentAction {
    CreateReplicaSet(Box<ReplicaSet>),
    /// Set `spec.replicas` and merge the given annotations.
    ScaleReplicaSet {
        name: String,
        replicas: i32,
        annotations: BTreeMap<String, String>,
    },
    DeleteReplicaSet {
        name: String,
    },
    WriteStatus(Box<DeploymentStatus>),
    /// Set the Deployment's own revision annotation to its new ReplicaSet's revision.
    SetRevision(String),
    Event {
        reason: &'static str,
        message: String,
    },
}

/// The owner reference a child carries so garbage collection follows its controller.
pub fn controller_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `meta` is controlled by the object with `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.controller == Some(true) && r.uid == uid)
    })
}

fn rs_name(rs: &ReplicaSet) -> String {
    rs.metadata.name.clone().unwrap_or_default()
}

fn scale_annotations(d: &Deployment, revision: Option<i64>) -> BTreeMap<String, String> {
    let desired = desired_replicas(d);
    let surge = if is_recreate(d) {
        0
    } else {
        resolve_fenceposts(d).0
    };
    let mut a = BTreeMap::from([
        (DESIRED_REPLICAS_ANNOTATION.to_string(), desired.to_string()),
        (
            MAX_REPLICAS_ANNOTATION.to_string(),
            (desired + surge).to_string(),
        ),
    ]);
    if let Some(r) = revision {
        a.insert(REVISION_ANNOTATION.into(), r.to_string());
    }
    a
}

/// The ReplicaSet for the Deployment's current template, named `<deployment>-<hash>`.
pub fn build_replica_set(d: &Deployment, hash: &str, replicas: i32, revision: i64) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let mut template = spec.template;
    let tmeta = template.metadata.get_or_insert_with(Default::default);
    tmeta
        .labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let labels = tmeta.labels.clone();
    let mut selector = spec.selector;
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut annotations: BTreeMap<String, String> = d
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            k != "kubectl.kubernetes.io/last-applied-configuration" && k != REVISION_ANNOTATION
        })
        .collect();
    annotations.extend(scale_annotations(d, Some(revision)));
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: d.metadata.namespace.clone(),
            labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref("apps/v1", "Deployment", &d.metadata)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// A pod template as compared for "same template": semantic JSON without the hash label.
fn semantic_template(template: Option<&PodTemplateSpec>) -> serde_json::Value {
    let mut value = serde_json::to_value(template).unwrap_or_default();
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(|l| l.as_object_mut())
    {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    semantic(&value)
}

fn scale_event(name: &str, from: i32, to: i32) -> DeploymentAction {
    let dir = if to > from { "up" } else { "down" };
    DeploymentAction::Event {
        reason: "ScalingReplicaSet",
        message: format!("Scaled {dir} replica set {name} from {from} to {to}"),
    }
}

fn scale(d: &Deployment, rs: &ReplicaSet, to: i32, revision: Option<i64>) -> [DeploymentAction; 2] {
    [
        DeploymentAction::ScaleReplicaSet {
            name: rs_name(rs),
            replicas: to,
            annotations: scale_annotations(d, revision),
        },
        scale_event(&rs_name(rs), rs_spec_replicas(rs), to),
    ]
}

/// The Deployment's ReplicaSets sorted into the one that matches its template and the rest.
struct Sets<'a> {
    /// The oldest live ReplicaSet whose template equals the Deployment's, ignoring the hash label
    /// (`FindNewReplicaSet`); this is what makes `kubectl rollout undo` revive an old
    /// ReplicaSet instead of creating another.
    new_rs: Option<&'a ReplicaSet>,
    /// Every other owned ReplicaSet, oldest revision first.
    old: Vec<&'a ReplicaSet>,
    /// The highest revision among `old` (0 when there is none).
    max_old_revision: i64,
}

impl<'a> Sets<'a> {
    fn sort(template: &PodTemplateSpec, owned: &'a [ReplicaSet]) -> Self {
        let wanted = semantic_template(Some(template));
        let mut by_age: Vec<&ReplicaSet> = owned.iter().collect();
        by_age.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        let new_rs = by_age.iter().copied().find(|rs| {
            rs.metadata.deletion_timestamp.is_none()
                && semantic_template(rs.spec.as_ref().and_then(|s| s.template.as_ref())) == wanted
        });
        let mut old: Vec<&ReplicaSet> = owned
            .iter()
            .filter(|rs| new_rs.is_none_or(|n| !std::ptr::eq(*rs, n)))
            .collect();
        old.sort_by(|a, b| {
            (revision(a), &a.metadata.creation_timestamp)
                .cmp(&(revision(b), &b.metadata.creation_timestamp))
        });
        let max_old_revision = old.iter().map(|rs| revision(rs)).max().unwrap_or(0);
        Self {
            new_rs,
            old,
            max_old_revision,
        }
    }

    /// The revision the new ReplicaSet must be bumped to, if it is not already the newest.
    fn bump(&self, rs: &ReplicaSet) -> Option<i64> {
        (revision(rs) <= self.max_old_revision).then_some(self.max_old_revision + 1)
    }
}

/// The scaling writes decided for one pass, and the name of a ReplicaSet created by them.
#[derive(Default)]
struct Step {
    actions: Vec<DeploymentAction>,
    created: Option<String>,
}

impl Step {
    fn create(&mut self, rs: ReplicaSet) {
        self.created = Some(rs_name(&rs));
        self.actions
            .push(DeploymentAction::CreateReplicaSet(Box::new(rs)));
    }
}

/// Decides the writes for one Deployment. `owned` are the ReplicaSets it controls; `pods` the pods
/// of its namespace (only needed for `Recreate`, which waits for old pods to be gone).
pub fn plan(
    d: &Deployment,
    owned: &[ReplicaSet],
    pods: &[&Pod],
    now: &Time,
) -> Vec<DeploymentAction> {
    let Some(spec) = d.spec.as_ref() else {
        return Vec::new();
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collision);
    let sets = Sets::sort(&spec.template, owned);
    let step = if spec.paused == Some(true) {
        // A paused Deployment neither rolls out nor scales; only its status is kept.
        Step::default()
    } else if is_recreate(d) {
        plan_recreate(d, &sets, &hash, pods)
    } else {
        plan_rolling(d, &sets, &hash, owned)
    };
    finish(d, &sets, owned, step, now)
}

/// `Recreate`: scale every old ReplicaSet to zero, wait for their pods to be gone, then bring
/// the new one up at full size.
fn plan_recreate(d: &Deployment, sets: &Sets<'_>, hash: &str, pods: &[&Pod]) -> Step {
    let mut step = Step::default();
    let scaling_down: Vec<&&ReplicaSet> = sets
        .old
        .iter()
        .filter(|rs| rs_spec_replicas(rs) > 0)
        .collect();
    if !scaling_down.is_empty() {
        for rs in scaling_down {
            step.actions.extend(scale(d, rs, 0, None));
        }
        return step;
    }
    let old_uids: Vec<&str> = sets
        .old
        .iter()
        .filter_map(|rs| rs.metadata.uid.as_deref())
        .collect();
    let old_pods_left = pods.iter().any(|p| {
        old_uids
            .iter()
            .any(|uid| is_controlled_by(&p.metadata, uid))
            && !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
    });
    if old_pods_left {
        return step;
    }
    let desired = desired_replicas(d);
    match sets.new_rs {
        None => step.create(build_replica_set(
            d,
            hash,
            desired,
            sets.max_old_revision + 1,
        )),
        Some(rs) if rs_spec_replicas(rs) != desired => {
            step.actions.extend(scale(d, rs, desired, sets.bump(rs)));
        }
        Some(_) => {}
    }
    step
}

/// `RollingUpdate`: grow the new ReplicaSet within `maxSurge`, then shrink the old ones within
/// `maxUnavailable` as new pods become available.
fn plan_rolling(d: &Deployment, sets: &Sets<'_>, hash: &str, owned: &[ReplicaSet]) -> Step {
    let mut step = Step::default();
    let Some(rs) = sets.new_rs else {
        let total: i32 = sets.old.iter().map(|rs| rs_spec_replicas(rs)).sum();
        let replicas = new_rs_replicas(d, total, 0);
        step.create(build_replica_set(
            d,
            hash,
            replicas,
            sets.max_old_revision + 1,
        ));
        if replicas > 0 {
            let name = step.created.clone().unwrap_or_default();
            step.actions.push(scale_event(&name, 0, replicas));
        }
        return step;
    };
    let rev = sets.bump(rs);
    let total: i32 = owned.iter().map(rs_spec_replicas).sum();
    let current = rs_spec_replicas(rs);
    let desired = desired_replicas(d);
    let target = if current > desired {
        desired
    } else {
        new_rs_replicas(d, total, current)
    };
    if target != current || rev.is_some() {
        step.actions.extend(scale(d, rs, target, rev));
        if target == current {
            // Only the revision moves: no scaling Event.
            step.actions.pop();
        }
    } else {
        for s in scale_down_old(d, rs, &sets.old) {
            if let Some(o) = sets.old.iter().find(|o| rs_name(o) == s.name) {
                step.actions.extend(scale(d, o, s.replicas, None));
            }
        }
    }
    step
}

/// Adds what follows the scaling writes: history cleanup once the rollout is complete, the
/// Deployment's revision annotation, and its status.
fn finish(
    d: &Deployment,
    sets: &Sets<'_>,
    owned: &[ReplicaSet],
    step: Step,
    now: &Time,
) -> Vec<DeploymentAction> {
    let Step {
        mut actions,
        created,
    } = step;
    let all: Vec<&ReplicaSet> = owned.iter().collect();
    let new_status = status::compute(d, &all, sets.new_rs, created.as_deref(), now);
    if actions.is_empty() && status::is_complete(d, &new_status) {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        actions.extend(cleanup(limit, &sets.old));
    }
    let current_revision = match (&created, sets.new_rs) {
        (Some(_), _) => Some(sets.max_old_revision + 1),
        (None, Some(rs)) => Some(sets.bump(rs).unwrap_or_else(|| revision(rs))),
        (None, None) => None,
    };
    let annotated = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION));
    if let Some(rev) = current_revision.map(|r| r.to_string()) {
        if annotated != Some(&rev) {
            actions.push(DeploymentAction::SetRevision(rev));
        }
    }
    if d.status.as_ref() != Some(&new_status) {
        actions.push(DeploymentAction::WriteStatus(Box::new(new_status)));
    }
    actions
}

/// Deletes the oldest fully scaled-down ReplicaSets beyond `revisionHistoryLimit`.
fn cleanup(limit: i32, old: &[&ReplicaSet]) -> Vec<DeploymentAction> {
    let cleanable: Vec<&&ReplicaSet> = old
        .iter()
        .filter(|rs| {
            rs_spec_replicas(rs) == 0
                && rs_status_counts(rs).0 == 0
                && rs.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let excess = cleanable
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    cleanable
        .into_iter()
        .take(excess)
        .map(|rs| DeploymentAction::DeleteReplicaSet { name: rs_name(rs) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetStatus};
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_000).unwrap_or_default())
    }

    fn deploy(replicas: i32, image: &str) -> Deployment {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("d-uid".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                revision_history_limit: Some(1),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: Some(image.into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The ReplicaSet the controller would have created, with the given observed counts.
    fn existing(d: &Deployment, spec: i32, available: i32, rev: i64) -> ReplicaSet {
        let template = d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let hash = template_hash(&template, None);
        let mut rs = build_replica_set(d, &hash, spec, rev);
        rs.metadata.uid = Some(format!("uid-{hash}"));
        rs.status = Some(ReplicaSetStatus {
            replicas: spec,
            ready_replicas: Some(available),
            available_replicas: Some(available),
            ..Default::default()
        });
        rs
    }

    fn creates(actions: &[DeploymentAction]) -> Vec<&ReplicaSet> {
        actions
            .iter()
            .filter_map(|a| match a {
                DeploymentAction::CreateReplicaSet(rs) => Some(rs.as_ref()),
                _ => None,
            })
            .collect()
    }

    fn scales(actions: &[DeploymentAction]) -> Vec<(String, i32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                DeploymentAction::ScaleReplicaSet { name, replicas, .. } => {
                    Some((name.clone(), *replicas))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_new_deployment_gets_a_hashed_replica_set_owned_by_it() {
        // The first sync creates `<deploy>-<pod-template-hash>` with the hash label and owner reference.
        let d = deploy(3, "img:1");
        let actions = plan(&d, &[], &[], &now());
        let rs = creates(&actions);
        assert_eq!(rs.len(), 1);
        let rs = rs[0];
        let hash = rs
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
            .cloned();
        assert_eq!(rs.metadata.name, hash.map(|h| format!("web-{h}")));
        assert_eq!(rs.spec.as_ref().and_then(|s| s.replicas), Some(3));
        let owner = rs.metadata.owner_references.clone().unwrap_or_default();
        assert_eq!(owner[0].uid, "d-uid");
        assert_eq!(owner[0].controller, Some(true));
        assert_eq!(revision(rs), 1);
    }

    #[test]
    fn planning_twice_gives_equal_decisions_and_a_settled_deployment_needs_no_write() {
        // Decisions are deterministic, and a complete rollout with a written status plans nothing.
        let mut d = deploy(2, "img:1");
        let rs = existing(&d, 2, 2, 1);
        let first = plan(&d, std::slice::from_ref(&rs), &[], &now());
        assert_eq!(first, plan(&d, std::slice::from_ref(&rs), &[], &now()));
        let Some(DeploymentAction::WriteStatus(s)) = first.last().cloned() else {
            panic!("expected a status write, got {first:?}");
        };
        d.status = Some(*s);
        assert!(first.contains(&DeploymentAction::SetRevision("1".into())));
        d.metadata.annotations = Some(BTreeMap::from([(
            REVISION_ANNOTATION.to_string(),
            "1".to_string(),
        )]));
        assert!(plan(&d, &[rs], &[], &now()).is_empty());
    }

    #[test]
    fn a_template_change_starts_a_rolling_update_within_surge() {
        // 3 replicas, default 25%/25%: the new ReplicaSet starts with one pod (surge 1).
        let d1 = deploy(3, "img:1");
        let old = existing(&d1, 3, 3, 1);
        let d2 = deploy(3, "img:2");
        let actions = plan(&d2, std::slice::from_ref(&old), &[], &now());
        let rs = creates(&actions);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].spec.as_ref().and_then(|s| s.replicas), Some(1));
        assert_eq!(revision(rs[0]), 2);
        assert!(
            scales(&actions).is_empty(),
            "old pods stay until new ones are available"
        );
    }

    #[test]
    fn rolling_back_revives_the_old_replica_set() {
        // A template equal to an old ReplicaSet's (as after `kubectl rollout undo`) makes that
        // ReplicaSet the new one again, with a bumped revision, instead of creating another.
        let d1 = deploy(2, "img:1");
        let r1 = existing(&d1, 0, 0, 1);
        let d2 = deploy(2, "img:2");
        let r2 = existing(&d2, 2, 2, 2);
        let mut back = deploy(2, "img:1");
        if let Some(t) = back
            .spec
            .as_mut()
            .and_then(|s| s.template.metadata.as_mut())
        {
            t.annotations = Some(BTreeMap::new());
        }
        let actions = plan(&back, &[r1.clone(), r2], &[], &now());
        assert!(creates(&actions).is_empty(), "{actions:?}");
        let revived = actions.iter().find_map(|a| match a {
            DeploymentAction::ScaleReplicaSet {
                name, annotations, ..
            } if Some(name) == r1.metadata.name.as_ref() => {
                annotations.get(REVISION_ANNOTATION).cloned()
            }
            _ => None,
        });
        assert_eq!(revived.as_deref(), Some("3"));
    }

    #[test]
    fn old_replica_sets_scale_down_as_new_pods_become_available() {
        // Once the new pod is available the old ReplicaSet loses one pod.
        let d1 = deploy(3, "img:1");
        let old = existing(&d1, 3, 3, 1);
        let d2 = deploy(3, "img:2");
        let new = existing(&d2, 1, 1, 2);
        let actions = plan(&d2, &[old.clone(), new], &[], &now());
        assert_eq!(
            scales(&actions),
            vec![(old.metadata.name.clone().unwrap_or_default(), 2)]
        );
    }

    #[test]
    fn history_beyond_the_limit_is_deleted_once_complete() {
        // revisionHistoryLimit 1: of two empty old ReplicaSets the older one is deleted.
        let d1 = deploy(2, "img:1");
        let r1 = existing(&d1, 0, 0, 1);
        let d2 = deploy(2, "img:2");
        let r2 = existing(&d2, 0, 0, 2);
        let d3 = deploy(2, "img:3");
        let r3 = existing(&d3, 2, 2, 3);
        let actions = plan(&d3, &[r1.clone(), r2, r3], &[], &now());
        assert!(actions.contains(&DeploymentAction::DeleteReplicaSet {
            name: r1.metadata.name.clone().unwrap_or_default()
        }));
    }

    #[test]
    fn recreate_scales_old_pods_away_before_creating_new_ones() {
        // Recreate never runs old and new pods together: old to zero, wait for pods, then new.
        use k8s_openapi::api::apps::v1::DeploymentStrategy;
        let recreate = |mut d: Deployment| {
            if let Some(spec) = d.spec.as_mut() {
                spec.strategy = Some(DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    rolling_update: None,
                });
            }
            d
        };
        let d1 = recreate(deploy(2, "img:1"));
        let old = existing(&d1, 2, 2, 1);
        let d2 = recreate(deploy(2, "img:2"));
        let actions = plan(&d2, std::slice::from_ref(&old), &[], &now());
        assert_eq!(
            scales(&actions),
            vec![(old.metadata.name.clone().unwrap_or_default(), 0)]
        );
        assert!(creates(&actions).is_empty());

        let drained = existing(&d1, 0, 0, 1);
        let old_pod = Pod {
            metadata: ObjectMeta {
                owner_references: drained.metadata.uid.clone().map(|uid| {
                    vec![OwnerReference {
                        uid,
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let waiting = plan(&d2, std::slice::from_ref(&drained), &[&old_pod], &now());
        assert!(creates(&waiting).is_empty(), "old pods still exist");
        let go = plan(&d2, &[drained], &[], &now());
        assert_eq!(creates(&go).len(), 1);
        assert_eq!(
            creates(&go)[0].spec.as_ref().and_then(|s| s.replicas),
            Some(2)
        );
    }
}
