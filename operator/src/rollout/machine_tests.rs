//! Unit tests of the rollout state machine: inputs in, plans out.

use flotilla_crds::{FailOn, RolloutPhase, RolloutSpec, RolloutStatus, RolloutStrategy};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::*;
use crate::rollout::Latency;

const OLD: &str = "rev-old";
const NEW: &str = "rev-new";

fn guarded() -> RolloutSpec {
    RolloutSpec {
        strategy: RolloutStrategy::Guarded,
        analysis_seconds: 10,
        ready_timeout_seconds: 30,
        ..RolloutSpec::default()
    }
}

fn t(secs: i64) -> Timestamp {
    Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1_700_000_000 + secs)
}

fn stable(rev: &str) -> RolloutStatus {
    RolloutStatus {
        phase: RolloutPhase::Stable,
        stable_revision: Some(rev.into()),
        ..RolloutStatus::default()
    }
}

fn pod(name: &str, rev: &str, ready: bool) -> CanaryPod {
    CanaryPod {
        name: name.into(),
        revision: Some(rev.into()),
        ready,
        ..CanaryPod::default()
    }
}

fn evidence(pods: Vec<CanaryPod>) -> CanaryEvidence {
    CanaryEvidence {
        pods,
        stable_error_ratio: None,
        latency: None,
    }
}

/// Runs the machine with the common inputs.
fn run(
    spec: &RolloutSpec,
    status: Option<&RolloutStatus>,
    canary: &CanaryEvidence,
    now: Timestamp,
) -> RolloutDecision {
    next_step(&RolloutInputs {
        spec,
        desired_revision: NEW,
        canary_replicas: 1,
        status,
        retry_token: None,
        promote_token: None,
        abort_token: None,
        undo_to_good: false,
        canary,
        failed_over: false,
        now,
    })
}

/// The status after the canary of NEW started at t(0).
fn analysing() -> RolloutStatus {
    let plan = run(&guarded(), Some(&stable(OLD)), &evidence(vec![]), t(0));
    assert_eq!(plan.status.phase, RolloutPhase::Analyzing);
    plan.status
}

/// The status after NEW failed at t(5).
fn rolled_back() -> RolloutStatus {
    let mut ev = evidence(vec![pod("c", NEW, false)]);
    ev.pods[0].fatal_waiting = Some("ImagePullBackOff".into());
    let plan = run(&guarded(), Some(&analysing()), &ev, t(5));
    assert_eq!(plan.status.phase, RolloutPhase::RolledBack);
    plan.status
}

/// RollingUpdate is today's behaviour: the Deployment takes the new template, no canary, and the
/// status only records the revision.
#[test]
fn rolling_update_applies_at_once() {
    let spec = RolloutSpec::default();
    let plan = run(&spec, Some(&stable(OLD)), &evidence(vec![]), t(0));
    assert_eq!(plan.stable, StableTemplate::Desired);
    assert_eq!(plan.canary, CanaryAction::Absent);
    assert_eq!(plan.status.phase, RolloutPhase::Stable);
    assert_eq!(plan.status.stable_revision.as_deref(), Some(NEW));
    assert_eq!(plan.event, None);
}

/// With no stored revision (a new MicroService) there is nothing to guard against: the first
/// template is the stable one.
#[test]
fn first_template_becomes_stable() {
    let plan = run(&guarded(), None, &evidence(vec![]), t(0));
    assert_eq!(plan.stable, StableTemplate::Desired);
    assert_eq!(plan.canary, CanaryAction::Absent);
    assert_eq!(plan.status.stable_revision.as_deref(), Some(NEW));
    assert_eq!(plan.requeue_after, None);
}

/// A new template starts an analysis: the stable pods keep the old template, a canary runs the
/// new one, the clock starts and an Event says so.
#[test]
fn new_template_starts_a_canary() {
    let plan = run(&guarded(), Some(&stable(OLD)), &evidence(vec![]), t(0));
    assert_eq!(plan.stable, StableTemplate::Keep);
    assert_eq!(plan.canary, CanaryAction::Run { replicas: 1 });
    assert_eq!(plan.status.canary_revision.as_deref(), Some(NEW));
    assert_eq!(plan.status.stable_revision.as_deref(), Some(OLD));
    assert_eq!(plan.status.analysis_start_time, Some(Time(t(0))));
    let event = plan.event.unwrap_or_else(|| panic!("start event"));
    assert_eq!(event.reason, reason::STARTED);
    assert!(!event.warning);
    assert!(plan.requeue_after.is_some());
}

/// The machine's memory is the status: fed its own status back (an operator restart), it
/// resumes the analysis without restarting the clock or repeating the Event.
#[test]
fn restart_resumes_the_analysis() {
    let status = analysing();
    let plan = run(&guarded(), Some(&status), &evidence(vec![]), t(3));
    assert_eq!(plan.event, None);
    assert_eq!(plan.status, status);
    assert_eq!(plan.canary, CanaryAction::Run { replicas: 1 });
    let again = run(&guarded(), Some(&plan.status), &evidence(vec![]), t(3));
    assert_eq!(again, plan, "nothing changed → same plan, no status write");
}

/// A healthy canary is promoted once it has been ready for `analysisSeconds`: the stable
/// Deployment takes the new template and the canary goes.
#[test]
fn healthy_canary_is_promoted() {
    let ev = evidence(vec![pod("c", NEW, true)]);
    let plan = run(&guarded(), Some(&analysing()), &ev, t(4));
    assert_eq!(plan.status.canary_ready_time, Some(Time(t(4))));
    assert_eq!(plan.stable, StableTemplate::Keep);
    let waiting = run(&guarded(), Some(&plan.status), &ev, t(13));
    assert_eq!(waiting.stable, StableTemplate::Keep);
    assert_eq!(waiting.event, None);
    let done = run(&guarded(), Some(&waiting.status), &ev, t(14));
    assert_eq!(done.stable, StableTemplate::Desired);
    assert_eq!(done.canary, CanaryAction::Absent);
    assert_eq!(done.status.phase, RolloutPhase::Promoted);
    assert_eq!(done.status.stable_revision.as_deref(), Some(NEW));
    assert_eq!(done.status.canary_revision, None);
    assert_eq!(done.event.map(|e| e.reason), Some(reason::PROMOTED));
    // After the promotion the spec's template is the stable one and nothing more happens.
    let after = run(&guarded(), Some(&done.status), &ev, t(20));
    assert_eq!(after.status.phase, RolloutPhase::Promoted);
    assert_eq!(after.event, None);
    assert_eq!(degraded(Some(&after.status)), None);
}

/// An image that cannot be pulled fails the analysis at once, without waiting for the ready
/// timeout; the stable template stays, the revision is recorded as failed with evidence, an
/// Event warns and `Degraded` says `RolloutFailed`.
#[test]
fn image_pull_error_rolls_back_at_once() {
    let status = rolled_back();
    assert_eq!(status.failed_revision.as_deref(), Some(NEW));
    assert_eq!(status.stable_revision.as_deref(), Some(OLD));
    assert_eq!(status.reason.as_deref(), Some(reason::NOT_READY));
    assert_eq!(status.evidence.len(), 1);
    assert_eq!(status.evidence[0].pod, "c");
    assert_eq!(status.evidence[0].observation, "ImagePullBackOff");
    let (why, msg) = degraded(Some(&status)).unwrap_or_else(|| panic!("degraded"));
    assert_eq!(why, "RolloutFailed");
    assert!(msg.contains(NEW) && msg.contains(OLD), "{msg}");
}

/// The rollback plan itself: stable kept, canary deleted, a warning Event.
#[test]
fn rollback_plan_deletes_the_canary() {
    let mut ev = evidence(vec![pod("c", NEW, false)]);
    ev.pods[0].fatal_waiting = Some("CrashLoopBackOff".into());
    let plan = run(&guarded(), Some(&analysing()), &ev, t(5));
    assert_eq!(plan.stable, StableTemplate::Keep);
    assert_eq!(plan.canary, CanaryAction::Absent);
    let event = plan.event.unwrap_or_else(|| panic!("event"));
    assert_eq!(event.reason, reason::ROLLED_BACK);
    assert!(event.warning);
}

/// A canary that never becomes ready (readiness failing, no fatal reason) fails when the ready
/// timeout expires, not before.
#[test]
fn never_ready_fails_at_the_timeout() {
    let ev = evidence(vec![pod("c", NEW, false)]);
    let before = run(&guarded(), Some(&analysing()), &ev, t(29));
    assert_eq!(before.status.phase, RolloutPhase::Analyzing);
    assert_eq!(before.canary, CanaryAction::Run { replicas: 1 });
    let after = run(&guarded(), Some(&before.status), &ev, t(30));
    assert_eq!(after.status.phase, RolloutPhase::RolledBack);
    assert_eq!(after.status.reason.as_deref(), Some(reason::NOT_READY));
    assert_eq!(after.status.evidence[0].observation, "not ready after 30s");
}

/// The prober's verdict fails the canary when `ProbeFailure` is listed, and is ignored when not.
#[test]
fn probe_failure_follows_fail_on() {
    let mut ev = evidence(vec![pod("c", NEW, true)]);
    ev.pods[0].probe_failure = Some("http 503".into());
    let plan = run(&guarded(), Some(&analysing()), &ev, t(2));
    assert_eq!(plan.status.reason.as_deref(), Some(reason::PROBE_FAILED));
    assert_eq!(plan.status.evidence[0].observation, "probe: http 503");
    let mut lenient = guarded();
    lenient.fail_on = vec![FailOn::ErrorRate];
    let plan = run(&lenient, Some(&analysing()), &ev, t(2));
    assert_eq!(plan.status.phase, RolloutPhase::Analyzing);
}

/// A canary pod that was ready and turns unready fails the analysis.
#[test]
fn turning_unready_fails() {
    let ready = run(
        &guarded(),
        Some(&analysing()),
        &evidence(vec![pod("c", NEW, true)]),
        t(2),
    );
    let plan = run(
        &guarded(),
        Some(&ready.status),
        &evidence(vec![pod("c", NEW, false)]),
        t(3),
    );
    assert_eq!(plan.status.reason.as_deref(), Some(reason::PROBE_FAILED));
}

/// The error rate is judged against the stable pods' ratio plus `maxErrorRate`.
#[test]
fn error_rate_is_relative_to_stable() {
    let mut ev = evidence(vec![pod("c", NEW, true)]);
    ev.pods[0].error_ratio = Some(0.5);
    ev.stable_error_ratio = Some(0.48);
    let ok = run(&guarded(), Some(&analysing()), &ev, t(2));
    assert_eq!(ok.status.phase, RolloutPhase::Analyzing);
    ev.stable_error_ratio = Some(0.0);
    let bad = run(&guarded(), Some(&analysing()), &ev, t(2));
    assert_eq!(bad.status.reason.as_deref(), Some(reason::ERROR_RATE));
    assert_eq!(
        bad.status.evidence[0].observation,
        "5xx ratio 0.50 vs stable 0.00"
    );
}

fn latency(canary_millis: f64, stable_millis: f64, at: Timestamp) -> Option<Latency> {
    Some(Latency {
        canary_millis,
        stable_millis,
        observed_at: at,
    })
}

/// A canary that answers correctly but much slower fails on latency: its p99 above the stable
/// pods' times `maxLatencyRatio` and by more than `latencyToleranceMillis`; within either
/// bound it passes.
#[test]
fn latency_fails_a_slower_canary() {
    let mut ev = evidence(vec![pod("c", NEW, true)]);
    ev.latency = latency(248.0, 4.95, t(2));
    let bad = run(&guarded(), Some(&analysing()), &ev, t(2));
    assert_eq!(bad.status.phase, RolloutPhase::RolledBack);
    assert_eq!(bad.status.reason.as_deref(), Some(reason::LATENCY));
    assert_eq!(bad.status.evidence[0].pod, "");
    assert_eq!(
        bad.status.evidence[0].observation,
        "p99 latency 248 ms vs stable 4.95 ms (limit: 2x and 20 ms more)"
    );
    assert_eq!(bad.event.map(|e| e.reason), Some(reason::ROLLED_BACK));
    // Twice as slow, but only 15 ms more: within the tolerance.
    ev.latency = latency(30.0, 15.0, t(2));
    let ok = run(&guarded(), Some(&analysing()), &ev, t(2));
    assert_eq!(ok.status.phase, RolloutPhase::Analyzing);
    // 90 ms more, but under twice the stable pods' 100 ms.
    ev.latency = latency(190.0, 100.0, t(2));
    let ok = run(&guarded(), Some(&analysing()), &ev, t(2));
    assert_eq!(ok.status.phase, RolloutPhase::Analyzing);
    // The bounds come from the spec.
    let mut strict = guarded();
    strict.max_latency_ratio = 1.5;
    let bad = run(&strict, Some(&analysing()), &ev, t(2));
    assert_eq!(bad.status.reason.as_deref(), Some(reason::LATENCY));
}

/// Latency is judged only when asked (`failOn`), on figures observed during this analysis;
/// without figures (no histogram, too few requests) the canary is promoted.
#[test]
fn latency_needs_fail_on_and_fresh_figures() {
    let mut ev = evidence(vec![pod("c", NEW, true)]);
    ev.latency = latency(248.0, 4.95, t(-1));
    let stale = run(&guarded(), Some(&analysing()), &ev, t(2));
    assert_eq!(
        stale.status.phase,
        RolloutPhase::Analyzing,
        "figures from before the start"
    );
    ev.latency = latency(248.0, 4.95, t(2));
    let mut lenient = guarded();
    lenient.fail_on = vec![FailOn::ErrorRate, FailOn::ProbeFailure, FailOn::Restart];
    let ok = run(&lenient, Some(&analysing()), &ev, t(2));
    assert_eq!(ok.status.phase, RolloutPhase::Analyzing);
    ev.latency = None;
    let ready = run(&guarded(), Some(&analysing()), &ev, t(2));
    let done = run(&guarded(), Some(&ready.status), &ev, t(13));
    assert_eq!(done.status.phase, RolloutPhase::Promoted);
}

/// A restarting canary container fails the analysis.
#[test]
fn restarts_fail() {
    let mut ev = evidence(vec![pod("c", NEW, true)]);
    ev.pods[0].restarts = 2;
    let plan = run(&guarded(), Some(&analysing()), &ev, t(2));
    assert_eq!(plan.status.reason.as_deref(), Some(reason::RESTARTED));
}

/// A failover to the fallback during the analysis aborts the rollout.
#[test]
fn failover_aborts() {
    let ev = evidence(vec![pod("c", NEW, true)]);
    let plan = next_step(&RolloutInputs {
        spec: &guarded(),
        desired_revision: NEW,
        canary_replicas: 1,
        status: Some(&analysing()),
        retry_token: None,
        promote_token: None,
        abort_token: None,
        undo_to_good: false,
        canary: &ev,
        failed_over: true,
        now: t(1),
    });
    assert_eq!(plan.status.reason.as_deref(), Some(reason::FAILED_OVER));
    assert_eq!(plan.stable, StableTemplate::Keep);
}

/// Pods of an older canary revision (still terminating) are not evidence about the new one.
#[test]
fn other_revisions_are_ignored() {
    let mut ev = evidence(vec![pod("old-canary", "rev-other", false)]);
    ev.pods[0].fatal_waiting = Some("ImagePullBackOff".into());
    let plan = run(&guarded(), Some(&analysing()), &ev, t(1));
    assert_eq!(plan.status.phase, RolloutPhase::Analyzing);
}

/// Re-applying the failed template does not retry it; a new retry annotation value does, once.
#[test]
fn failed_template_is_retried_only_when_asked() {
    let failed = rolled_back();
    let hold = run(&guarded(), Some(&failed), &evidence(vec![]), t(60));
    assert_eq!(hold.stable, StableTemplate::Keep);
    assert_eq!(hold.canary, CanaryAction::Absent);
    assert_eq!(hold.event, None);
    assert_eq!(hold.status, failed);

    let retry = |status: &RolloutStatus, token: &str| {
        next_step(&RolloutInputs {
            spec: &guarded(),
            desired_revision: NEW,
            canary_replicas: 1,
            status: Some(status),
            retry_token: Some(token),
            promote_token: None,
            abort_token: None,
            undo_to_good: false,
            canary: &evidence(vec![]),
            failed_over: false,
            now: t(61),
        })
    };
    let again = retry(&failed, "1");
    assert_eq!(again.status.phase, RolloutPhase::Analyzing);
    assert_eq!(again.status.retry_token.as_deref(), Some("1"));
    // The next reconcile, with the same token, carries on with that analysis.
    let next = retry(&again.status, "1");
    assert_eq!(next.status.phase, RolloutPhase::Analyzing);
    assert!(matches!(next.canary, CanaryAction::Run { .. }), "{next:?}");
    // The same token after a second failure does not retry a third time.
    let mut failed_twice = failed.clone();
    failed_twice.retry_token = Some("1".into());
    assert_eq!(
        retry(&failed_twice, "1").status.phase,
        RolloutPhase::RolledBack
    );
}

/// Going back to the last good template after a failure clears `Degraded`.
#[test]
fn reverting_the_spec_settles() {
    let failed = rolled_back();
    let plan = next_step(&RolloutInputs {
        spec: &guarded(),
        desired_revision: OLD,
        canary_replicas: 1,
        status: Some(&failed),
        retry_token: None,
        promote_token: None,
        abort_token: None,
        undo_to_good: false,
        canary: &evidence(vec![]),
        failed_over: false,
        now: t(60),
    });
    assert_eq!(plan.stable, StableTemplate::Desired);
    assert_eq!(plan.status.phase, RolloutPhase::Stable);
    assert_eq!(degraded(Some(&plan.status)), None);
    // The failure stays on record until another analysis starts.
    assert_eq!(plan.status.failed_revision.as_deref(), Some(NEW));
}

/// A newer template arriving mid-analysis replaces the canary and restarts the clock.
#[test]
fn newer_template_restarts_the_analysis() {
    let status = analysing();
    let plan = next_step(&RolloutInputs {
        spec: &guarded(),
        desired_revision: "rev-newer",
        canary_replicas: 1,
        status: Some(&status),
        retry_token: None,
        promote_token: None,
        abort_token: None,
        undo_to_good: false,
        canary: &evidence(vec![pod("c", NEW, true)]),
        failed_over: false,
        now: t(5),
    });
    assert_eq!(plan.status.canary_revision.as_deref(), Some("rev-newer"));
    assert_eq!(plan.status.analysis_start_time, Some(Time(t(5))));
    assert_eq!(plan.event.map(|e| e.reason), Some(reason::STARTED));
}

/// With `autoRollback: false` a failed canary is scaled to zero and kept, not deleted.
#[test]
fn without_auto_rollback_the_canary_is_halted() {
    let mut spec = guarded();
    spec.auto_rollback = false;
    let mut ev = evidence(vec![pod("c", NEW, false)]);
    ev.pods[0].fatal_waiting = Some("ErrImagePull".into());
    let plan = run(&spec, Some(&analysing()), &ev, t(1));
    assert_eq!(plan.canary, CanaryAction::Halted);
    assert_eq!(plan.event.map(|e| e.reason), Some(reason::HALTED));
}

/// Switching back to RollingUpdate mid-analysis ends it: the new template rolls out normally.
#[test]
fn switching_strategy_ends_the_analysis() {
    let plan = run(
        &RolloutSpec::default(),
        Some(&analysing()),
        &evidence(vec![]),
        t(2),
    );
    assert_eq!(plan.stable, StableTemplate::Desired);
    assert_eq!(plan.canary, CanaryAction::Absent);
    assert_eq!(plan.status.phase, RolloutPhase::Stable);
}

/// [`run`] with the promote and abort annotations set to `promote` and `abort`.
fn run_with_requests(
    status: &RolloutStatus,
    canary: &CanaryEvidence,
    now: Timestamp,
    promote: Option<&str>,
    abort: Option<&str>,
) -> RolloutDecision {
    next_step(&RolloutInputs {
        spec: &guarded(),
        desired_revision: NEW,
        canary_replicas: 1,
        status: Some(status),
        retry_token: None,
        promote_token: promote,
        abort_token: abort,
        undo_to_good: false,
        canary,
        failed_over: false,
        now,
    })
}

/// A paused rollout holds a canary that passed its analysis (Analyzing, reason `Paused`), still
/// rolls back a canary that fails, and promotes once resumed.
#[test]
fn paused_holds_promotion_but_not_rollback() {
    let mut paused = guarded();
    paused.paused = true;
    let ready = evidence(vec![pod("c", NEW, true)]);
    let first = run(&paused, Some(&analysing()), &ready, t(1));
    let held = run(&paused, Some(&first.status), &ready, t(20));
    assert_eq!(held.status.phase, RolloutPhase::Analyzing);
    assert_eq!(held.status.reason.as_deref(), Some(reason::PAUSED));
    assert_eq!(held.stable, StableTemplate::Keep);
    assert_eq!(held.canary, CanaryAction::Run { replicas: 1 });
    assert_eq!(held.event, None);
    let mut bad = ready.clone();
    bad.pods[0].restarts = 1;
    let failed = run(&paused, Some(&held.status), &bad, t(21));
    assert_eq!(failed.status.phase, RolloutPhase::RolledBack);
    let resumed = run(&guarded(), Some(&held.status), &ready, t(21));
    assert_eq!(resumed.status.phase, RolloutPhase::Promoted);
    assert_eq!(resumed.stable, StableTemplate::Desired);
}

/// A new promote request ends the analysis at once with the new template everywhere; the token
/// is acknowledged and the same token does nothing to the next analysis.
#[test]
fn promote_request_promotes_now_once() {
    let plan = run_with_requests(&analysing(), &evidence(vec![]), t(1), Some("p1"), None);
    assert_eq!(plan.status.phase, RolloutPhase::Promoted);
    assert_eq!(plan.stable, StableTemplate::Desired);
    assert_eq!(plan.canary, CanaryAction::Absent);
    assert_eq!(plan.status.promote_token.as_deref(), Some("p1"));
    let event = plan.event.unwrap_or_else(|| panic!("a Promoted event"));
    assert_eq!(event.reason, reason::PROMOTED);
    assert!(event.note.contains("by request"), "{}", event.note);
    // The next release starts its analysis; the acknowledged token does not promote it.
    let mut next = analysing();
    next.promote_token = Some("p1".into());
    let plan = run_with_requests(&next, &evidence(vec![]), t(1), Some("p1"), None);
    assert_eq!(plan.status.phase, RolloutPhase::Analyzing);
}

/// A new abort request rolls the analysed revision back with reason `Aborted` (and wins over a
/// promote request sent with it); the revision counts as failed.
#[test]
fn abort_request_rolls_back_now() {
    let plan = run_with_requests(&analysing(), &evidence(vec![]), t(1), Some("p"), Some("a"));
    assert_eq!(plan.status.phase, RolloutPhase::RolledBack);
    assert_eq!(plan.status.reason.as_deref(), Some(reason::ABORTED));
    assert_eq!(plan.status.failed_revision.as_deref(), Some(NEW));
    assert_eq!(plan.status.abort_token.as_deref(), Some("a"));
    assert_eq!(plan.status.promote_token.as_deref(), Some("p"));
    assert_eq!(plan.stable, StableTemplate::Keep);
    assert_eq!(plan.canary, CanaryAction::Absent);
    assert_eq!(plan.event.map(|e| e.reason), Some(reason::ROLLED_BACK));
}

/// With no analysis under way a request is acknowledged and changes nothing, so it cannot act
/// on a later release.
#[test]
fn requests_without_an_analysis_are_only_acknowledged() {
    let settled = run(&guarded(), Some(&stable(NEW)), &evidence(vec![]), t(0));
    let plan = run_with_requests(
        &settled.status,
        &evidence(vec![]),
        t(1),
        Some("p"),
        Some("a"),
    );
    assert_eq!(plan.status.phase, settled.status.phase);
    assert_eq!(plan.event, None);
    assert_eq!(plan.status.promote_token.as_deref(), Some("p"));
    assert_eq!(plan.status.abort_token.as_deref(), Some("a"));
}

/// A template taken back from the revision history (the undo annotation names it, history says
/// it was good) becomes stable at once: no canary, reason `Undone`, an Event; without both, the
/// same template is analysed like any new one.
#[test]
fn undo_to_a_good_revision_skips_the_analysis() {
    let undo = |good: bool| {
        next_step(&RolloutInputs {
            spec: &guarded(),
            desired_revision: NEW,
            canary_replicas: 1,
            status: Some(&stable(OLD)),
            retry_token: None,
            promote_token: None,
            abort_token: None,
            undo_to_good: good,
            canary: &evidence(vec![]),
            failed_over: false,
            now: t(0),
        })
    };
    let plan = undo(true);
    assert_eq!(plan.stable, StableTemplate::Desired);
    assert_eq!(plan.canary, CanaryAction::Absent);
    assert_eq!(plan.status.phase, RolloutPhase::Stable);
    assert_eq!(plan.status.stable_revision.as_deref(), Some(NEW));
    assert_eq!(plan.status.reason.as_deref(), Some(reason::UNDONE));
    assert_eq!(plan.event.map(|e| e.reason), Some(reason::UNDONE));
    assert_eq!(plan.requeue_after, None);
    assert_eq!(undo(false).status.phase, RolloutPhase::Analyzing);
}
