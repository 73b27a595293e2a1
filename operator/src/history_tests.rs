//! Unit tests of the revision history's pure parts: which entry a rollout step records, and
//! which entries the limit drops.

use super::*;
use crate::rollout::machine::RolloutEvent;
use crate::rollout::{CanaryAction, StableTemplate};
use flotilla_crds::RolloutPhase;

fn status(stable: &str, failed: Option<&str>, phase: RolloutPhase) -> RolloutStatus {
    RolloutStatus {
        phase,
        stable_revision: Some(stable.into()),
        failed_revision: failed.map(Into::into),
        reason: Some("CanaryNotReady".into()),
        ..RolloutStatus::default()
    }
}

fn decision(next: RolloutStatus, event: Option<&'static str>) -> RolloutDecision {
    RolloutDecision {
        stable: StableTemplate::Keep,
        canary: CanaryAction::Absent,
        status: next,
        event: event.map(|reason| RolloutEvent {
            reason,
            note: String::new(),
            warning: false,
        }),
        requeue_after: None,
    }
}

/// A new stable template is recorded with how it got there; a newly rolled-back one with its
/// reason; a step that changes no revision records nothing (a converged service writes nothing).
#[test]
fn entries_follow_the_revisions() {
    let before = status("a", None, RolloutPhase::Stable);
    let first = decision(status("a", None, RolloutPhase::Stable), None);
    assert_eq!(
        entry(None, &first).map(|e| (e.revision, e.outcome)),
        Some(("a".to_string(), history::OUTCOME_STABLE))
    );
    assert_eq!(entry(Some(&before), &first), None);
    let promoted = decision(
        status("b", None, RolloutPhase::Promoted),
        Some(reason::PROMOTED),
    );
    assert_eq!(
        entry(Some(&before), &promoted).map(|e| e.outcome),
        Some(history::OUTCOME_PROMOTED)
    );
    let undone = decision(
        status("b", None, RolloutPhase::Stable),
        Some(reason::UNDONE),
    );
    assert_eq!(
        entry(Some(&before), &undone).map(|e| e.outcome),
        Some(history::OUTCOME_UNDONE)
    );
    let failed = decision(
        status("a", Some("c"), RolloutPhase::RolledBack),
        Some(reason::ROLLED_BACK),
    );
    assert_eq!(
        entry(Some(&before), &failed),
        Some(Entry {
            revision: "c".into(),
            outcome: history::OUTCOME_ROLLED_BACK,
            reason: Some("CanaryNotReady".into()),
        })
    );
    // Holding the failed template afterwards (no Event) records nothing again.
    let held = decision(status("a", Some("c"), RolloutPhase::RolledBack), None);
    let after_failure = status("a", Some("c"), RolloutPhase::RolledBack);
    assert_eq!(entry(Some(&after_failure), &held), None);
}

fn recorded(name: &str, revision: i64) -> ControllerRevision {
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: None,
        revision,
    }
}

/// The oldest entries go first, down to the limit, and the stable template's entry stays even
/// when it is the oldest.
#[test]
fn pruning_keeps_the_newest_and_the_stable() {
    let entries = vec![
        recorded("s-old", 1),
        recorded("s-stable", 2),
        recorded("s-3", 3),
        recorded("s-4", 4),
    ];
    assert_eq!(to_prune(&entries, 2, "s-4"), vec!["s-old", "s-stable"]);
    assert_eq!(to_prune(&entries, 2, "s-stable"), vec!["s-old", "s-3"]);
    assert_eq!(to_prune(&entries, 10, "s-4"), Vec::<String>::new());
}

/// What is recorded is the spec's template fields; replicas, autoscaling, rollout, failover,
/// service and dependencies are left out, so `undo` does not touch them.
#[test]
fn recorded_spec_leaves_out_operational_fields() {
    let spec = serde_json::from_value(serde_json::json!({
        "image": "flotilla/users:0.2.0",
        "replicas": 3,
        "env": [{"name": "A", "value": "1"}],
        "rollout": {"strategy": "Guarded"},
    }))
    .unwrap_or_else(|e| panic!("spec parses: {e}"));
    let ms = MicroService::new("users", spec);
    let data = recorded_spec(&ms).unwrap_or_else(|e| panic!("{e}"));
    let fields = data["spec"].as_object().cloned().unwrap_or_default();
    assert_eq!(fields["image"], "flotilla/users:0.2.0");
    assert_eq!(fields["env"][0]["name"], "A");
    for untracked in history::UNTRACKED_SPEC_FIELDS {
        assert!(!fields.contains_key(untracked), "{untracked} recorded");
    }
}
