//! The guarded-rollout state machine.
//!
//! Inputs: `spec.rollout`, the revision of the template the spec asks for, the stored
//! `status.rollout` (the machine's only memory, so a restarted operator resumes an analysis), the
//! retry annotation, the canary evidence, whether traffic failed over, and `now`. Output: a
//! [`RolloutDecision`] value. No client, no clock, no I/O.
//!
//! Phases: `Stable`/`Promoted` (every pod on the stable revision) → `Analyzing` (a canary runs the
//! new revision) → `Promoted` (the stable Deployment takes the new template) or `RolledBack` (the
//! canary goes; the revision is remembered as failed and not retried until the template or the
//! retry annotation changes).

use std::time::Duration;

use flotilla_crds::{
    FailOn, RolloutEvidence, RolloutPhase, RolloutSpec, RolloutStatus, RolloutStrategy,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::evidence::{CanaryEvidence, CanaryPod};

/// Evidence entries kept in status (the schema's limit).
const MAX_EVIDENCE: usize = 10;
/// How often an analysis is looked at again when nothing else wakes the reconciler. Pod and
/// failover-status changes wake it sooner; this only bounds how late a timer fires.
const ANALYSIS_POLL: Duration = Duration::from_secs(2);

/// Event and status reasons.
pub mod reason {
    /// The canary passed its analysis; every pod moves to its template.
    pub use flotilla_crds::event_reasons::PROMOTED;
    /// A new revision's canary pods were created.
    pub use flotilla_crds::event_reasons::ROLLOUT_STARTED as STARTED;
    /// A canary pod never became ready (or cannot: image pull error, crash loop).
    pub const NOT_READY: &str = "CanaryNotReady";
    /// Flotilla's probes judged a canary pod unhealthy, or it turned unready.
    pub const PROBE_FAILED: &str = "CanaryProbeFailed";
    /// The canary's 5xx ratio exceeded the stable pods' by more than `maxErrorRate`.
    pub const ERROR_RATE: &str = "CanaryErrorRate";
    /// The canary's p99 latency exceeded the stable pods' by more than `maxLatencyRatio` (and
    /// `latencyToleranceMillis`).
    pub const LATENCY: &str = "CanaryLatency";
    /// A canary container restarted.
    pub const RESTARTED: &str = "CanaryRestarted";
    /// Traffic failed over to the fallback during the analysis.
    pub const FAILED_OVER: &str = "FailedOver";
    /// Event reason of a rollback.
    pub use flotilla_crds::event_reasons::ROLLED_BACK;
    /// Event reason of a failed analysis whose canary is kept (`autoRollback: false`).
    pub use flotilla_crds::event_reasons::ROLLOUT_HALTED as HALTED;
    /// A person asked for the analysis to end in a rollback (`flotilla.rs/rollout-abort`).
    pub const ABORTED: &str = "Aborted";
    /// The analysis passed while `spec.rollout.paused` holds promotion.
    pub const PAUSED: &str = "Paused";
    /// A template from the revision history became stable again without an analysis.
    pub use flotilla_crds::event_reasons::UNDONE;
}

/// What the state machine reads.
#[derive(Debug, Clone)]
pub struct RolloutInputs<'a> {
    /// `spec.rollout`.
    pub spec: &'a RolloutSpec,
    /// Revision of the pod template the current spec builds.
    pub desired_revision: &'a str,
    /// Canary pods wanted during an analysis (see `canary_replicas`).
    pub canary_replicas: i32,
    /// The stored `status.rollout`.
    pub status: Option<&'a RolloutStatus>,
    /// The `flotilla.rs/rollout-retry` annotation.
    pub retry_token: Option<&'a str>,
    /// The `flotilla.rs/rollout-promote` annotation.
    pub promote_token: Option<&'a str>,
    /// The `flotilla.rs/rollout-abort` annotation.
    pub abort_token: Option<&'a str>,
    /// Whether the desired revision is the one the `flotilla.rs/rollout-undo` annotation names
    /// and the revision history records it as good: it becomes stable without an analysis.
    pub undo_to_good: bool,
    /// What the canary pods show.
    pub canary: &'a CanaryEvidence,
    /// Whether the Service's traffic is on the fallback.
    pub failed_over: bool,
    /// The current time.
    pub now: Timestamp,
}

/// Which template the `<name>` Deployment runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StableTemplate {
    /// The one the current spec builds.
    Desired,
    /// The one it runs now (the last good template): leave its pod template alone.
    Keep,
}

/// What happens to the `<name>-canary` Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryAction {
    /// There is none: delete it if it exists.
    Absent,
    /// Run the desired template on this many pods.
    Run {
        /// Canary pods.
        replicas: i32,
    },
    /// A failed canary kept for inspection (`autoRollback: false`): scaled to zero pods, so it
    /// takes no traffic, its object and ReplicaSet kept.
    Halted,
}

/// An Event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutEvent {
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable note.
    pub note: String,
    /// `Warning` rather than `Normal`.
    pub warning: bool,
}

/// The state machine's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDecision {
    /// Template of the stable Deployment.
    pub stable: StableTemplate,
    /// The canary Deployment.
    pub canary: CanaryAction,
    /// The next `status.rollout`.
    pub status: RolloutStatus,
    /// An Event, on a transition.
    pub event: Option<RolloutEvent>,
    /// Look again after this long (analysis timers); `None` when nothing is pending.
    pub requeue_after: Option<Duration>,
}

/// The `Degraded` condition a rollout status implies: `(reason, message)` while the last
/// analysis failed and the spec still asks for the failed revision. `Ready` is not affected: the
/// stable pods keep serving.
pub fn degraded(status: Option<&RolloutStatus>) -> Option<(&'static str, String)> {
    let s = status.filter(|s| s.phase == RolloutPhase::RolledBack)?;
    Some((
        flotilla_crds::reasons::ROLLOUT_FAILED,
        s.message.clone().unwrap_or_default(),
    ))
}

/// What a person asked for through the one-shot annotations, not yet acknowledged.
#[derive(Debug, Clone, Copy, Default)]
struct Requests {
    promote: bool,
    abort: bool,
}

/// The next step of the rollout. A promote or abort request is acknowledged in the status
/// whatever the step (so an old request never acts on a later analysis) and acts only on an
/// analysis under way; abort wins over promote.
pub fn next_step(i: &RolloutInputs<'_>) -> RolloutDecision {
    let prev = i.status.cloned().unwrap_or_default();
    let fresh = |token: Option<&str>, seen: &Option<String>| {
        token.is_some_and(|t| Some(t) != seen.as_deref())
    };
    let requests = Requests {
        promote: fresh(i.promote_token, &prev.promote_token),
        abort: fresh(i.abort_token, &prev.abort_token),
    };
    let mut decision = step(&prev, i, requests);
    decision.status.promote_token = i.promote_token.map(str::to_string).or(prev.promote_token);
    decision.status.abort_token = i.abort_token.map(str::to_string).or(prev.abort_token);
    decision
}

fn step(prev: &RolloutStatus, i: &RolloutInputs<'_>, requests: Requests) -> RolloutDecision {
    let prev = prev.clone();
    let desired = i.desired_revision;
    if i.spec.strategy == RolloutStrategy::RollingUpdate {
        return settled(&prev, desired, i, None);
    }
    let Some(stable) = prev.stable_revision.as_deref() else {
        // Nothing ran before (a new MicroService, or status lost): nothing to compare against.
        return settled(&prev, desired, i, None);
    };
    if stable == desired {
        return settled(&prev, desired, i, None);
    }
    if i.undo_to_good {
        let note = format!(
            "back to revision {desired} from the revision history, without an analysis, as \
             requested (flotilla.rs/rollout-undo); it replaces revision {stable}"
        );
        let event = RolloutEvent {
            reason: reason::UNDONE,
            note: note.clone(),
            warning: false,
        };
        let mut plan = settled(&prev, desired, i, Some(event));
        plan.status.phase = RolloutPhase::Stable;
        plan.status.reason = Some(reason::UNDONE.into());
        plan.status.message = Some(note);
        plan.status.retry_token = prev.retry_token.clone();
        return plan;
    }
    let retry = i.retry_token.is_some() && i.retry_token != prev.retry_token.as_deref();
    if prev.failed_revision.as_deref() == Some(desired) && !retry {
        // The failed template is still asked for: hold the last good one.
        let mut status = prev.clone();
        status.phase = RolloutPhase::RolledBack;
        status.canary_revision = None;
        return RolloutDecision {
            stable: StableTemplate::Keep,
            canary: halted_or_absent(i.spec),
            status,
            event: None,
            requeue_after: None,
        };
    }
    let analysing =
        prev.phase == RolloutPhase::Analyzing && prev.canary_revision.as_deref() == Some(desired);
    if !analysing {
        return start(&prev, desired, i);
    }
    if requests.abort {
        let e = RolloutEvidence {
            pod: String::new(),
            observation: "aborted by request (flotilla.rs/rollout-abort)".into(),
        };
        return roll_back(&prev, desired, i, reason::ABORTED, vec![e]);
    }
    if requests.promote {
        let event = RolloutEvent {
            reason: reason::PROMOTED,
            note: format!(
                "revision {desired} promoted by request (flotilla.rs/rollout-promote) before \
                 its analysis ended"
            ),
            warning: false,
        };
        let mut plan = settled(&prev, desired, i, Some(event));
        plan.status.retry_token = prev.retry_token.clone();
        return plan;
    }
    analyse(&prev, desired, i)
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn halted_or_absent(spec: &RolloutSpec) -> CanaryAction {
    if spec.auto_rollback {
        CanaryAction::Absent
    } else {
        CanaryAction::Halted
    }
}

/// Every pod on `desired`, no canary. A rollout that was under way ends as promoted (the event
/// says so) when `promoted` is given; otherwise the phase settles to `Stable`, or stays
/// `Promoted` after a promotion.
fn settled(
    prev: &RolloutStatus,
    desired: &str,
    i: &RolloutInputs<'_>,
    promoted: Option<RolloutEvent>,
) -> RolloutDecision {
    let mut status = RolloutStatus {
        phase: match (&promoted, prev.phase) {
            (Some(_), _) => RolloutPhase::Promoted,
            (None, RolloutPhase::Promoted) if prev.stable_revision.as_deref() == Some(desired) => {
                RolloutPhase::Promoted
            }
            _ => RolloutPhase::Stable,
        },
        stable_revision: Some(desired.to_string()),
        retry_token: prev.retry_token.clone(),
        // What the last analysis found stays visible until another one starts.
        failed_revision: prev.failed_revision.clone(),
        reason: prev.reason.clone(),
        message: prev.message.clone(),
        last_transition_time: prev.last_transition_time.clone(),
        evidence: prev.evidence.clone(),
        ..RolloutStatus::default()
    };
    if promoted.is_some() {
        status.reason = Some(reason::PROMOTED.into());
        status.message = Some(format!("revision {desired} passed its analysis"));
        status.last_transition_time = Some(time(i.now));
        status.evidence.clear();
        status.failed_revision = None;
    }
    RolloutDecision {
        stable: StableTemplate::Desired,
        canary: CanaryAction::Absent,
        status,
        event: promoted,
        requeue_after: None,
    }
}

/// A new revision: create its canary and start the clock.
fn start(prev: &RolloutStatus, desired: &str, i: &RolloutInputs<'_>) -> RolloutDecision {
    let status = RolloutStatus {
        phase: RolloutPhase::Analyzing,
        stable_revision: prev.stable_revision.clone(),
        canary_revision: Some(desired.to_string()),
        analysis_start_time: Some(time(i.now)),
        canary_ready_time: None,
        // A retry of the failed revision clears its mark, or the next reconcile would take the
        // retry for a re-apply of the failed template and stop the analysis it just started.
        failed_revision: prev
            .failed_revision
            .clone()
            .filter(|failed| failed != desired),
        reason: Some(reason::STARTED.into()),
        message: Some(format!(
            "analysing revision {desired} on {} canary pod(s) for {}s",
            i.canary_replicas, i.spec.analysis_seconds
        )),
        last_transition_time: Some(time(i.now)),
        retry_token: i
            .retry_token
            .map(str::to_string)
            .or(prev.retry_token.clone()),
        promote_token: prev.promote_token.clone(),
        abort_token: prev.abort_token.clone(),
        evidence: Vec::new(),
    };
    RolloutDecision {
        stable: StableTemplate::Keep,
        canary: CanaryAction::Run {
            replicas: i.canary_replicas,
        },
        event: Some(RolloutEvent {
            reason: reason::STARTED,
            note: status.message.clone().unwrap_or_default(),
            warning: false,
        }),
        status,
        requeue_after: Some(ANALYSIS_POLL),
    }
}

/// The analysis of `desired` is under way: fail, wait or promote.
fn analyse(prev: &RolloutStatus, desired: &str, i: &RolloutInputs<'_>) -> RolloutDecision {
    let pods: Vec<&CanaryPod> = i
        .canary
        .pods
        .iter()
        .filter(|p| p.revision.as_deref() == Some(desired))
        .collect();
    let started = prev.analysis_start_time.as_ref().map_or(i.now, |t| t.0);
    let ready_since = prev.canary_ready_time.as_ref().map(|t| t.0);
    if let Some((why, evidence)) = failure(i, &pods, started, ready_since) {
        return roll_back(prev, desired, i, why, evidence);
    }
    let ready = pods.iter().filter(|p| p.ready).count();
    let all_ready = ready >= usize::try_from(i.canary_replicas).unwrap_or(1);
    let mut status = prev.clone();
    let Some(since) = ready_since.or(all_ready.then_some(i.now)) else {
        let timeout = secs(i.spec.ready_timeout_seconds);
        let left = timeout.saturating_sub(elapsed(started, i.now));
        return hold(status, i.canary_replicas, left);
    };
    status.canary_ready_time = Some(time(since));
    let needed = secs(i.spec.analysis_seconds);
    let passed = elapsed(since, i.now);
    if passed >= needed && i.spec.paused {
        // Evidence is still checked on every look: a paused canary that turns bad is rolled
        // back all the same.
        status.reason = Some(reason::PAUSED.into());
        status.message = Some(format!(
            "revision {desired} passed its analysis; promotion paused (spec.rollout.paused) \
             until resumed or promoted"
        ));
        return hold(status, i.canary_replicas, ANALYSIS_POLL);
    }
    if passed >= needed {
        let event = RolloutEvent {
            reason: reason::PROMOTED,
            note: format!(
                "revision {desired} stayed healthy for {}s on {} canary pod(s); promoting it",
                i.spec.analysis_seconds,
                pods.len()
            ),
            warning: false,
        };
        let mut plan = settled(&status, desired, i, Some(event));
        plan.status.retry_token = status.retry_token;
        return plan;
    }
    hold(status, i.canary_replicas, needed - passed)
}

/// Keep analysing: the canary runs, the stable pods stay, look again when a timer may expire.
fn hold(status: RolloutStatus, replicas: i32, left: Duration) -> RolloutDecision {
    RolloutDecision {
        stable: StableTemplate::Keep,
        canary: CanaryAction::Run { replicas },
        status,
        event: None,
        requeue_after: Some(left.clamp(Duration::from_millis(100), ANALYSIS_POLL)),
    }
}

fn secs(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn elapsed(from: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// One observation about a canary pod, when it shows a failure.
type Check<'a> = dyn Fn(&CanaryPod) -> Option<String> + 'a;

/// The first failure the evidence shows, with the observations that prove it.
fn failure(
    i: &RolloutInputs<'_>,
    pods: &[&CanaryPod],
    started: Timestamp,
    ready_since: Option<Timestamp>,
) -> Option<(&'static str, Vec<RolloutEvidence>)> {
    let on = |f: FailOn| i.spec.fail_on.contains(&f);
    let seen = |f: &Check| -> Vec<RolloutEvidence> {
        pods.iter()
            .filter_map(|p| {
                f(p).map(|observation| RolloutEvidence {
                    pod: p.name.clone(),
                    observation,
                })
            })
            .take(MAX_EVIDENCE)
            .collect()
    };
    if i.failed_over {
        let e = RolloutEvidence {
            pod: String::new(),
            observation: "the Service's traffic failed over to the fallback".into(),
        };
        return Some((reason::FAILED_OVER, vec![e]));
    }
    let checks: [(bool, &'static str, &Check); 5] = [
        (true, reason::NOT_READY, &|p| p.fatal_waiting.clone()),
        (on(FailOn::Restart), reason::RESTARTED, &|p| {
            (p.restarts > 0).then(|| format!("{} restart(s)", p.restarts))
        }),
        (on(FailOn::ProbeFailure), reason::PROBE_FAILED, &|p| {
            p.probe_failure.as_ref().map(|f| format!("probe: {f}"))
        }),
        (
            on(FailOn::ProbeFailure) && ready_since.is_some(),
            reason::PROBE_FAILED,
            &|p| (!p.ready).then(|| "turned unready during the analysis".to_string()),
        ),
        (on(FailOn::ErrorRate), reason::ERROR_RATE, &|p| {
            let base = i.canary.stable_error_ratio.unwrap_or(0.0);
            p.error_ratio
                .filter(|r| *r > base + i.spec.max_error_rate)
                .map(|r| format!("5xx ratio {r:.2} vs stable {base:.2}"))
        }),
    ];
    for (enabled, why, check) in checks {
        if !enabled {
            continue;
        }
        let evidence = seen(check);
        if !evidence.is_empty() {
            return Some((why, evidence));
        }
    }
    if on(FailOn::Latency) {
        if let Some(observation) = slower(i, started) {
            let e = RolloutEvidence {
                pod: String::new(),
                observation,
            };
            return Some((reason::LATENCY, vec![e]));
        }
    }
    let timeout = secs(i.spec.ready_timeout_seconds);
    if ready_since.is_none() && elapsed(started, i.now) >= timeout {
        let mut evidence = seen(&|p| {
            (!p.ready).then(|| format!("not ready after {}s", i.spec.ready_timeout_seconds))
        });
        if evidence.is_empty() {
            evidence.push(RolloutEvidence {
                pod: String::new(),
                observation: format!(
                    "{} of {} canary pod(s) ready after {}s",
                    pods.iter().filter(|p| p.ready).count(),
                    i.canary_replicas,
                    i.spec.ready_timeout_seconds
                ),
            });
        }
        return Some((reason::NOT_READY, evidence));
    }
    None
}

/// What shows the canary pods too slow, if they are: their p99 latency above the stable
/// pods' times `maxLatencyRatio` and more than `latencyToleranceMillis` above it, in figures
/// observed since the analysis started (older ones may be a previous canary's).
fn slower(i: &RolloutInputs<'_>, started: Timestamp) -> Option<String> {
    let l = i
        .canary
        .latency
        .as_ref()
        .filter(|l| l.observed_at >= started)?;
    let ratio = i.spec.max_latency_ratio;
    let tolerance = f64::from(i.spec.latency_tolerance_millis.max(0));
    let slow =
        l.canary_millis > l.stable_millis * ratio && l.canary_millis - l.stable_millis > tolerance;
    slow.then(|| {
        format!(
            "p99 latency {} ms vs stable {} ms (limit: {ratio}x and {tolerance} ms more)",
            l.canary_millis, l.stable_millis
        )
    })
}

/// The analysis failed: back to the last good template, remember the revision as failed.
fn roll_back(
    prev: &RolloutStatus,
    desired: &str,
    i: &RolloutInputs<'_>,
    why: &'static str,
    evidence: Vec<RolloutEvidence>,
) -> RolloutDecision {
    let first = evidence
        .first()
        .map(|e| match e.pod.as_str() {
            "" => e.observation.clone(),
            pod => format!("{pod}: {}", e.observation),
        })
        .unwrap_or_default();
    let kept = if i.spec.auto_rollback {
        "canary deleted"
    } else {
        "canary scaled to zero and kept"
    };
    let message = format!(
        "revision {desired} failed its analysis ({why}: {first}); pods stay on revision {}, {kept}",
        prev.stable_revision.as_deref().unwrap_or("unknown")
    );
    let status = RolloutStatus {
        phase: RolloutPhase::RolledBack,
        stable_revision: prev.stable_revision.clone(),
        canary_revision: None,
        analysis_start_time: None,
        canary_ready_time: None,
        failed_revision: Some(desired.to_string()),
        reason: Some(why.into()),
        message: Some(message.clone()),
        last_transition_time: Some(time(i.now)),
        retry_token: prev.retry_token.clone(),
        promote_token: prev.promote_token.clone(),
        abort_token: prev.abort_token.clone(),
        evidence,
    };
    RolloutDecision {
        stable: StableTemplate::Keep,
        canary: halted_or_absent(i.spec),
        status,
        event: Some(RolloutEvent {
            reason: if i.spec.auto_rollback {
                reason::ROLLED_BACK
            } else {
                reason::HALTED
            },
            note: message,
            warning: true,
        }),
        requeue_after: None,
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
