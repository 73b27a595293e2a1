//! Deployment status and conditions, computed as the real controller's `calculateStatus` and
//! `syncRolloutStatus` compute them. Pure; no client here.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::rollout::{desired_replicas, max_unavailable, rs_spec_replicas, rs_status_counts};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";

/// A fresh condition stamped `now` for both update and transition time.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

fn get<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn remove(status: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = status.conditions.as_mut() {
        c.retain(|c| c.type_ != type_);
    }
}

/// Sets a condition unless one with the same status and reason exists; keeps the transition time
/// when only the reason changes (`SetDeploymentCondition`).
pub fn set_condition(status: &mut DeploymentStatus, mut cond: DeploymentCondition) {
    if let Some(cur) = get(status, &cond.type_) {
        if cur.status == cond.status && cur.reason == cond.reason {
            return;
        }
        if cur.status == cond.status {
            cond.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove(status, &cond.type_);
    status.conditions.get_or_insert_with(Vec::new).push(cond);
}

fn progress_deadline(d: &Deployment) -> Option<i32> {
    // The API server defaults progressDeadlineSeconds to 600; i32::MAX means "no deadline".
    let secs = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    (secs != i32::MAX).then_some(secs)
}

/// Whether the rollout is finished: all replicas updated and available for the current generation.
pub fn is_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let desired = desired_replicas(d);
    status.updated_replicas.unwrap_or(0) == desired
        && status.replicas.unwrap_or(0) == desired
        && status.available_replicas.unwrap_or(0) == desired
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

fn is_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = new.replicas.unwrap_or(0) - new.updated_replicas.unwrap_or(0);
    new.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new_old < old_old
        || new.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || new.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

fn timed_out(deadline: i32, status: &DeploymentStatus, now: &Time) -> bool {
    let Some(cond) = get(status, PROGRESSING) else {
        return false;
    };
    match cond.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => cond.last_update_time.as_ref().is_some_and(|from| {
            let from = from.0.as_second();
            from.saturating_add(i64::from(deadline)) < now.0.as_second()
        }),
    }
}

/// The Deployment's status from its ReplicaSets: counts, `Available` and `Progressing`.
/// `created_new` names a new ReplicaSet created in this same sync.
pub fn compute(
    d: &Deployment,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    created_new: Option<&str>,
    now: &Time,
) -> DeploymentStatus {
    let name = d.metadata.name.clone().unwrap_or_default();
    let previous = d.status.clone().unwrap_or_default();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let available = sum(&|rs| rs_status_counts(rs).2);
    let total_spec = sum(&rs_spec_replicas);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(&|rs| rs_status_counts(rs).0)),
        updated_replicas: Some(new_rs.map_or(0, |rs| rs_status_counts(rs).0)),
        ready_replicas: Some(sum(&|rs| rs_status_counts(rs).1)),
        available_replicas: Some(available),
        unavailable_replicas: Some((total_spec - available).max(0)),
        collision_count: previous.collision_count,
        conditions: previous.conditions.clone(),
        terminating_replicas: None,
    };
    let desired = desired_replicas(d);
    if available >= desired - max_unavailable(d) {
        let c = condition(
            AVAILABLE,
            true,
            MIN_AVAILABLE,
            "Deployment has minimum availability.".into(),
            now,
        );
        set_condition(&mut status, c);
    } else {
        let c = condition(
            AVAILABLE,
            false,
            MIN_UNAVAILABLE,
            "Deployment does not have minimum availability.".into(),
            now,
        );
        set_condition(&mut status, c);
    }

    let Some(deadline) = progress_deadline(d) else {
        remove(&mut status, PROGRESSING);
        return status;
    };
    if let Some(created) = created_new {
        let msg = format!("Created new replica set \"{created}\"");
        set_condition(
            &mut status,
            condition(PROGRESSING, true, NEW_RS_CREATED, msg, now),
        );
        return status;
    }
    if get(&previous, PROGRESSING).is_none() {
        if let Some(rs) = new_rs {
            let msg = format!(
                "Found new replica set \"{}\"",
                rs.metadata.name.as_deref().unwrap_or_default()
            );
            set_condition(
                &mut status,
                condition(PROGRESSING, true, FOUND_NEW_RS, msg, now),
            );
        }
    }
    let current = get(&status, PROGRESSING).cloned();
    let rs_label = |verb: &str| match new_rs.and_then(|rs| rs.metadata.name.as_deref()) {
        Some(rs) => format!("ReplicaSet \"{rs}\" {verb}"),
        None => format!("Deployment \"{name}\" {verb}"),
    };
    let complete_already = status.replicas == status.updated_replicas
        && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(NEW_RS_AVAILABLE);
    if complete_already {
        return status;
    }
    if is_complete(d, &status) {
        let msg = rs_label("has successfully progressed.");
        set_condition(
            &mut status,
            condition(PROGRESSING, true, NEW_RS_AVAILABLE, msg, now),
        );
    } else if is_progressing(d, &status) {
        let mut c = condition(
            PROGRESSING,
            true,
            RS_UPDATED,
            rs_label("is progressing."),
            now,
        );
        if let Some(cur) = current {
            if cur.status == "True" {
                c.last_transition_time = cur.last_transition_time;
            }
            remove(&mut status, PROGRESSING);
        }
        set_condition(&mut status, c);
    } else if timed_out(deadline, &status, now) {
        let msg = rs_label("has timed out progressing.");
        set_condition(
            &mut status,
            condition(PROGRESSING, false, TIMED_OUT, msg, now),
        );
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetSpec, ReplicaSetStatus};
    use kube::api::ObjectMeta;

    fn now(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap_or_default())
    }

    fn deploy(replicas: i32, deadline: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                progress_deadline_seconds: Some(deadline),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn rs(name: &str, replicas: i32, available: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas,
                ready_replicas: Some(available),
                available_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    fn cond<'a>(s: &'a DeploymentStatus, t: &str) -> &'a DeploymentCondition {
        get(s, t).unwrap_or_else(|| panic!("condition {t} missing"))
    }

    #[test]
    fn a_fully_available_rollout_is_complete() {
        // All replicas updated and available → Available=True and NewReplicaSetAvailable.
        let d = deploy(3, 600);
        let new = rs("web-abc", 3, 3);
        let s = compute(&d, &[&new], Some(&new), None, &now(100));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(
            (s.replicas, s.updated_replicas, s.available_replicas),
            (Some(3), Some(3), Some(3))
        );
        assert_eq!(s.unavailable_replicas, Some(0));
        assert_eq!(cond(&s, AVAILABLE).status, "True");
        assert_eq!(
            cond(&s, PROGRESSING).reason.as_deref(),
            Some(NEW_RS_AVAILABLE)
        );
    }

    #[test]
    fn a_stuck_rollout_exceeds_its_progress_deadline() {
        // No progress for longer than progressDeadlineSeconds → Progressing=False with the real reason.
        let mut d = deploy(2, 10);
        let old = rs("web-old", 2, 2);
        let new = rs("web-new", 1, 0);
        let first = compute(&d, &[&old, &new], Some(&new), Some("web-new"), &now(100));
        assert_eq!(
            cond(&first, PROGRESSING).reason.as_deref(),
            Some(NEW_RS_CREATED)
        );
        d.status = Some(first.clone());
        let later = compute(&d, &[&old, &new], Some(&new), None, &now(105));
        assert_eq!(later, first, "nothing changed, so no status write");
        d.status = Some(later);
        let timed = compute(&d, &[&old, &new], Some(&new), None, &now(111));
        let p = cond(&timed, PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_deref()),
            ("False", Some(TIMED_OUT))
        );
    }

    #[test]
    fn progress_refreshes_the_update_time_but_not_the_transition_time() {
        // Progressing stays True across updates; only lastUpdateTime moves.
        let mut d = deploy(2, 600);
        let old = rs("web-old", 2, 2);
        let new0 = rs("web-new", 1, 0);
        d.status = Some(compute(
            &d,
            &[&old, &new0],
            Some(&new0),
            Some("web-new"),
            &now(100),
        ));
        let new1 = rs("web-new", 1, 1);
        let s = compute(&d, &[&old, &new1], Some(&new1), None, &now(150));
        let p = cond(&s, PROGRESSING);
        assert_eq!(p.reason.as_deref(), Some(RS_UPDATED));
        assert_eq!(p.last_transition_time, Some(now(100)));
        assert_eq!(p.last_update_time, Some(now(150)));
    }

    #[test]
    fn missing_availability_is_reported() {
        // Fewer available pods than replicas - maxUnavailable → Available=False.
        let d = deploy(4, 600);
        let new = rs("web-new", 4, 1);
        let s = compute(&d, &[&new], Some(&new), None, &now(1));
        assert_eq!(cond(&s, AVAILABLE).reason.as_deref(), Some(MIN_UNAVAILABLE));
        assert_eq!(s.unavailable_replicas, Some(3));
    }
}
