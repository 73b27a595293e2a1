//! Where the current release of a MicroService stands, as `status` reports it: still going,
//! finished well, or finished badly. Pure: read from the object alone.

use flotilla_crds::{conditions, MicroService, RolloutPhase};

/// The state of the release the spec asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// Not finished: why, in a few words.
    InProgress(String),
    /// Every pod runs the current spec and the service is ready.
    Succeeded(String),
    /// It will not finish by itself: rolled back, or degraded.
    Failed(String),
}

/// Judges `m`'s current release from its status.
pub fn release(m: &MicroService) -> Release {
    let Some(st) = m.status.as_ref() else {
        return Release::InProgress("waiting for the operator's first status".into());
    };
    if st.observed_generation != m.metadata.generation {
        return Release::InProgress("waiting for the operator to observe the latest spec".into());
    }
    if let Some(r) = &st.rollout {
        match r.phase {
            RolloutPhase::Analyzing => {
                return Release::InProgress(format!(
                    "analysing revision {}",
                    r.canary_revision.as_deref().unwrap_or("?")
                ))
            }
            RolloutPhase::RolledBack => {
                let evidence = r
                    .evidence
                    .first()
                    .map(|e| format!(" ({}: {})", e.pod, e.observation))
                    .unwrap_or_default();
                return Release::Failed(format!(
                    "revision {} was rolled back: {}{evidence}",
                    r.failed_revision.as_deref().unwrap_or("?"),
                    r.reason.as_deref().unwrap_or("no reason recorded"),
                ));
            }
            _ => {}
        }
    }
    let condition = |t: &str| st.conditions.iter().find(|c| c.type_ == t);
    if let Some(d) = condition(conditions::DEGRADED).filter(|c| c.status == conditions::TRUE) {
        return Release::Failed(format!("degraded: {}: {}", d.reason, d.message));
    }
    let ready = condition(conditions::READY);
    let all_updated = st.updated_replicas.unwrap_or(0) >= st.replicas.unwrap_or(0)
        && st.replicas == st.ready_replicas;
    match ready {
        Some(c) if c.status == conditions::TRUE && all_updated => Release::Succeeded(format!(
            "{} ready on the current spec{}",
            st.ready.as_deref().unwrap_or("all pods"),
            st.rollout
                .as_ref()
                .and_then(|r| r.stable_revision.as_deref())
                .map(|v| format!(" (revision {v})"))
                .unwrap_or_default()
        )),
        Some(c) => Release::InProgress(format!("{}: {}", c.reason, c.message)),
        None => Release::InProgress("no Ready condition yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_crds::{MicroServiceStatus, RolloutEvidence, RolloutStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn msvc(generation: i64, status: MicroServiceStatus) -> MicroService {
        let mut m = MicroService::new(
            "users",
            serde_json::from_value(serde_json::json!({"image": "flotilla/users:0.1.0"}))
                .unwrap_or_else(|e| panic!("a minimal spec parses: {e}")),
        );
        m.metadata.generation = Some(generation);
        m.status = Some(status);
        m
    }

    fn cond(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            observed_generation: Some(2),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    fn ready(generation: Option<i64>, ready: &str) -> MicroServiceStatus {
        MicroServiceStatus {
            observed_generation: generation,
            conditions: vec![cond(conditions::READY, ready, "AsExpected")],
            replicas: Some(2),
            ready_replicas: Some(2),
            updated_replicas: Some(2),
            ready: Some("2/2".into()),
            ..Default::default()
        }
    }

    /// A release is judged only once the operator has seen the spec that asks for it: a stale
    /// status, however good, is still in progress.
    #[test]
    fn judged_only_on_the_observed_generation() {
        let stale = msvc(3, ready(Some(2), conditions::TRUE));
        assert!(matches!(release(&stale), Release::InProgress(_)));
        let current = msvc(2, ready(Some(2), conditions::TRUE));
        assert!(matches!(release(&current), Release::Succeeded(_)));
    }

    /// An analysis under way is in progress; a rolled-back release failed, with its evidence.
    #[test]
    fn analysis_and_rollback() {
        let mut st = ready(Some(2), conditions::TRUE);
        st.rollout = Some(RolloutStatus {
            phase: RolloutPhase::Analyzing,
            canary_revision: Some("b2".into()),
            ..Default::default()
        });
        assert_eq!(
            release(&msvc(2, st.clone())),
            Release::InProgress("analysing revision b2".into())
        );
        st.rollout = Some(RolloutStatus {
            phase: RolloutPhase::RolledBack,
            failed_revision: Some("b2".into()),
            reason: Some("CanaryErrorRate".into()),
            evidence: vec![RolloutEvidence {
                pod: "users-canary-x".into(),
                observation: "5xx ratio 0.50 vs stable 0.00".into(),
            }],
            ..Default::default()
        });
        assert_eq!(
            release(&msvc(2, st)),
            Release::Failed(
                "revision b2 was rolled back: CanaryErrorRate (users-canary-x: 5xx ratio 0.50 vs stable 0.00)"
                    .into()
            )
        );
    }

    /// Degraded fails the wait; pods still moving to the new template keep it going.
    #[test]
    fn degraded_and_pods_still_updating() {
        let mut st = ready(Some(2), conditions::TRUE);
        st.conditions.push(cond(
            conditions::DEGRADED,
            conditions::TRUE,
            "ProgressDeadlineExceeded",
        ));
        assert!(
            matches!(release(&msvc(2, st)), Release::Failed(m) if m.contains("ProgressDeadlineExceeded"))
        );
        let mut st = ready(Some(2), conditions::TRUE);
        st.updated_replicas = Some(1);
        assert!(matches!(release(&msvc(2, st)), Release::InProgress(_)));
        let st = ready(Some(2), conditions::FALSE);
        assert!(matches!(release(&msvc(2, st)), Release::InProgress(_)));
    }
}
