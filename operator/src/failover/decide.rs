//! The decider: pod verdicts of a primary service and its fallback, the policy and the clock in;
//! the desired traffic membership, the active target and the changes to report out.
//!
//! Rules it keeps:
//! - Flotilla only takes traffic away from pods the kubelet considers Ready; a pod the kubelet
//!   does not consider Ready keeps the default membership, so Kubernetes stays in charge of it.
//! - Panic: when probing would leave the active service with no pods (or fewer healthy than
//!   `panicThresholdPercent`) although the kubelet has Ready ones, all kubelet-Ready pods keep
//!   serving (like Envoy's panic threshold).
//! - At most `maxEjectionPercent` of the primary's pods (at least one) are out of traffic at once;
//!   the earliest-detected failures are ejected first.
//! - A declared fallback that does not exist, or whose container port name differs from the
//!   primary's, is a configuration problem: reported, and failover never happens.
//! - Failover goes only to a fallback with at least `minHealthy` healthy pods; failback waits until
//!   the primary has been healthy for `recoverAfter`; after `maxFlaps` flips within `flapWindow`
//!   the current target is held unless it has nothing left to serve with.
//! - A hold (`holdOnFallback`, maintenance) moves traffic to a fallback with `minHealthy` healthy
//!   pods whatever the primary's health, and keeps it there until released; a person's move is
//!   not a flap, so it is neither counted nor held by the flap limit. After the release,
//!   traffic returns once the primary has been healthy for `recoverAfter`, as after a failover.
//!
//! Pure and synchronous: the caller owns the clock and the state between calls.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::policy::FailoverPolicy;

/// Where a primary service's traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// The service's own pods.
    #[default]
    Primary,
    /// The fallback service's healthy pods.
    Fallback,
}

impl Target {
    /// The value shown in status and the ACTIVE printer column.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Primary => "primary",
            Target::Fallback => "fallback",
        }
    }
}

/// What the decider needs to know about one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// The kubelet's Ready condition.
    pub kubelet_ready: bool,
    /// The prober's verdict.
    pub healthy: bool,
    /// For an unhealthy pod: when its decisive run of failures began.
    pub detected_from: Option<Instant>,
}

impl PodView {
    fn serves(&self) -> bool {
        self.kubelet_ready && self.healthy
    }
}

/// The fallback service as seen by the decider.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackView<'a> {
    /// The fallback's pods.
    pub pods: &'a [PodView],
    /// Whether the fallback's container port name equals the primary's; when it does not,
    /// failover is a validation error and never happens.
    pub port_name_matches: bool,
}

/// Whether a pod should carry the primary's membership label as `"true"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Label `"true"`: the pod receives the primary Service's traffic (if the kubelet agrees).
    In,
    /// Label `"false"` (or absent on a fallback pod): the pod is out of the primary Service.
    Out,
}

/// A service-level traffic change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Traffic moved to the fallback.
    FailedOver {
        /// Human-readable cause.
        reason: String,
        /// Start of the failure run that made the decision.
        detected_from: Option<Instant>,
    },
    /// Traffic returned to the primary.
    FailedBack {
        /// Human-readable cause.
        reason: String,
    },
}

/// A pod whose desired membership changed since the previous decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PodChange {
    /// Pod name.
    pub pod: String,
    /// Whether the pod belongs to the fallback service.
    pub fallback: bool,
    /// The new membership.
    pub to: Membership,
    /// For an ejection: when the pod's decisive failure run began.
    pub detected_from: Option<Instant>,
}

/// The decider's memory for one primary service between calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceState {
    /// The target traffic goes to.
    pub active: Target,
    /// Times of recent flips, oldest first.
    pub flips: VecDeque<Instant>,
    /// Since when the primary has continuously had `minHealthy` healthy pods.
    pub primary_ok_since: Option<Instant>,
    /// The last flip and its reason.
    pub last_change: Option<(Instant, String)>,
    /// Whether the primary has had `minHealthy` healthy pods at least once. A service that is
    /// still starting (never healthy) does not fail over, so rollouts do not count as flips.
    pub ever_ok: bool,
    /// Whether traffic is on the fallback because a hold moved it there; the return after the
    /// release is then a person's move too.
    pub moved_by_hold: bool,
    primary_members: BTreeMap<String, Membership>,
    fallback_members: BTreeMap<String, Membership>,
}

impl ServiceState {
    /// State resumed from what status says (e.g. after an operator restart), so the current
    /// target is kept; the recovery window starts again from zero.
    pub fn resume(active: Target) -> Self {
        Self {
            active,
            ever_ok: true,
            ..Self::default()
        }
    }

    /// Like [`ServiceState::resume`], with the membership the pods' labels show, so the first
    /// decision only reports pods whose membership really changes.
    pub fn resume_with(
        active: Target,
        primary_members: BTreeMap<String, Membership>,
        fallback_members: BTreeMap<String, Membership>,
    ) -> Self {
        Self {
            active,
            ever_ok: true,
            primary_members,
            fallback_members,
            ..Self::default()
        }
    }
}

/// One decision for one primary service.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Where traffic goes.
    pub active: Target,
    /// Probing found no healthy pod but the kubelet has Ready ones, which keep serving.
    pub panic: bool,
    /// Flips reached `maxFlaps` within the window; further flips are held.
    pub flapping: bool,
    /// A flip was wanted but held because of flapping.
    pub held: bool,
    /// Traffic is on the fallback because `holdOnFallback` asks for it.
    pub held_on_fallback: bool,
    /// A hold is asked for but the fallback has too few healthy pods to take the traffic.
    pub hold_waiting: bool,
    /// Primary pods that are kubelet-Ready and pass probing.
    pub healthy_pods: u32,
    /// Primary pods known.
    pub total_pods: u32,
    /// Fallback pods that are kubelet-Ready and pass probing.
    pub fallback_healthy_pods: u32,
    /// Desired membership of every primary pod.
    pub primary_members: BTreeMap<String, Membership>,
    /// Desired membership of every fallback pod in the primary's Service.
    pub fallback_members: BTreeMap<String, Membership>,
    /// A service-level change made by this decision.
    pub change: Option<Change>,
    /// Pods whose desired membership changed since the previous decision.
    pub pod_changes: Vec<PodChange>,
    /// A configuration problem that prevents failover (reported in status).
    pub invalid: Option<String>,
    /// A one-line explanation of the current state for status.
    pub message: String,
}

fn count_serving(pods: &[PodView]) -> u32 {
    u32::try_from(pods.iter().filter(|p| p.serves()).count()).unwrap_or(u32::MAX)
}

/// What this call sees, counted once: the inputs every later step reads.
struct Assessment<'a> {
    min_healthy: u32,
    healthy: u32,
    total: u32,
    primary_ok: bool,
    fallback_pods: &'a [PodView],
    fallback_healthy: u32,
    fallback_ok: bool,
    invalid: Option<String>,
}

/// The target a decision wants, why, whether staying would black-hole the service, and whether
/// a person asked for it (a hold or its release).
struct Want {
    target: Target,
    reason: String,
    urgent: bool,
    manual: bool,
}

/// Decides traffic for one primary service and updates `state`.
///
/// Steps, in order: assess the pods and the fallback, advance the clocks (recovery and flap
/// windows), choose the target, flip (or hold) it, derive every pod's membership for the chosen
/// target, diff it against the previous decision, and explain the result in one line.
pub fn decide(
    state: &mut ServiceState,
    policy: &FailoverPolicy,
    primary: &[PodView],
    fallback: Option<FallbackView<'_>>,
    now: Instant,
) -> Decision {
    let a = assess(policy, primary, fallback.as_ref());
    advance_clocks(state, policy, a.primary_ok, now);
    let want = choose_target(state, policy, &a, primary, now);
    let (change, held) = flip(state, policy, want, primary, now);
    let flapping = policy.max_flaps > 0 && state.flips.len() >= policy.max_flaps as usize;
    let (primary_members, fallback_members, panic) =
        membership(state.active, policy, primary, a.fallback_pods, a.healthy);

    let mut pod_changes = Vec::new();
    diff_members(
        &state.primary_members,
        &primary_members,
        primary,
        false,
        &mut pod_changes,
    );
    diff_members(
        &state.fallback_members,
        &fallback_members,
        a.fallback_pods,
        true,
        &mut pod_changes,
    );
    state.primary_members.clone_from(&primary_members);
    state.fallback_members.clone_from(&fallback_members);

    let held_on_fallback = policy.hold_on_fallback && state.active == Target::Fallback;
    let hold_waiting = policy.hold_on_fallback && state.active == Target::Primary;
    let message = if held_on_fallback {
        format!(
            "held on fallback for maintenance ({} healthy pods); primary has {} of {} healthy",
            a.fallback_healthy, a.healthy, a.total
        )
    } else if hold_waiting {
        format!(
            "hold on fallback asked, but the fallback has {} healthy pods (minHealthy {}); \
             traffic stays on primary",
            a.fallback_healthy, a.min_healthy
        )
    } else {
        explain(state.active, panic, held, &a, primary)
    };
    Decision {
        active: state.active,
        panic,
        flapping,
        held,
        held_on_fallback,
        hold_waiting,
        healthy_pods: a.healthy,
        total_pods: a.total,
        fallback_healthy_pods: a.fallback_healthy,
        primary_members,
        fallback_members,
        change,
        pod_changes,
        invalid: a.invalid,
        message,
    }
}

/// Counts healthy pods on both sides and finds configuration problems: a declared fallback that
/// does not exist, or one whose port name differs from the primary's.
fn assess<'a>(
    policy: &FailoverPolicy,
    primary: &[PodView],
    fallback: Option<&FallbackView<'a>>,
) -> Assessment<'a> {
    let min_healthy = policy.min_healthy.max(1);
    let healthy = count_serving(primary);
    let invalid = match fallback {
        Some(f) if !f.port_name_matches => Some(
            "the fallback's container port name differs from the primary's; failover disabled"
                .to_owned(),
        ),
        None if policy.fallback.is_some() => {
            Some("the fallback MicroService does not exist".to_owned())
        }
        _ => None,
    };
    let fallback_pods: &'a [PodView] = fallback.map_or(&[], |f| f.pods);
    let fallback_healthy = count_serving(fallback_pods);
    Assessment {
        min_healthy,
        healthy,
        total: u32::try_from(primary.len()).unwrap_or(u32::MAX),
        primary_ok: healthy >= min_healthy,
        fallback_pods,
        fallback_healthy,
        fallback_ok: fallback.is_some() && invalid.is_none() && fallback_healthy >= min_healthy,
        invalid,
    }
}

/// Moves the time-based memory forward: whether the primary was ever healthy, since when it has
/// been healthy (the recovery window), and which flips still fall inside the flap window.
fn advance_clocks(
    state: &mut ServiceState,
    policy: &FailoverPolicy,
    primary_ok: bool,
    now: Instant,
) {
    state.ever_ok |= primary_ok;
    state.primary_ok_since = if primary_ok {
        Some(state.primary_ok_since.unwrap_or(now))
    } else {
        None
    };
    if let Some(start) = now.checked_sub(policy.flap_window) {
        while state.flips.front().is_some_and(|t| *t <= start) {
            state.flips.pop_front();
        }
    }
}

/// The target traffic should go to, before flap limiting.
fn choose_target(
    state: &ServiceState,
    policy: &FailoverPolicy,
    a: &Assessment<'_>,
    primary: &[PodView],
    now: Instant,
) -> Want {
    let (healthy, total, min_healthy) = (a.healthy, a.total, a.min_healthy);
    let fallback_healthy = a.fallback_healthy;
    let stay = |target| Want {
        target,
        reason: String::new(),
        urgent: false,
        manual: false,
    };
    match state.active {
        Target::Primary if policy.hold_on_fallback && a.fallback_ok => Want {
            target: Target::Fallback,
            reason: format!(
                "held on fallback for maintenance (spec.failover.holdOnFallback); fallback has \
                 {fallback_healthy} healthy"
            ),
            urgent: false,
            manual: true,
        },
        Target::Primary if !a.primary_ok && a.fallback_ok && state.ever_ok => Want {
            target: Target::Fallback,
            reason: format!(
                "primary has {healthy} of {total} pods healthy (minHealthy {min_healthy}); \
                 fallback has {fallback_healthy} healthy"
            ),
            urgent: !primary.iter().any(|p| p.kubelet_ready),
            manual: false,
        },
        Target::Fallback if !a.fallback_ok => Want {
            target: Target::Primary,
            reason: format!(
                "fallback is no longer usable ({fallback_healthy} healthy pods); returning to primary"
            ),
            urgent: true,
            manual: false,
        },
        Target::Fallback if policy.hold_on_fallback => stay(Target::Fallback),
        Target::Fallback => match state.primary_ok_since {
            Some(since) if now.saturating_duration_since(since) >= policy.recover_after => Want {
                target: Target::Primary,
                reason: format!(
                    "primary has been healthy for {}s ({healthy} of {total} pods)",
                    policy.recover_after.as_secs()
                ),
                urgent: false,
                manual: state.moved_by_hold,
            },
            _ => stay(Target::Fallback),
        },
        Target::Primary => stay(Target::Primary),
    }
}

/// Flips the active target when wanted, unless the flap limit holds it (a flip that avoids a
/// black hole is never held). Returns the change made and whether a flip was held.
fn flip(
    state: &mut ServiceState,
    policy: &FailoverPolicy,
    want: Want,
    primary: &[PodView],
    now: Instant,
) -> (Option<Change>, bool) {
    if want.target == state.active {
        return (None, false);
    }
    let limit_reached = policy.max_flaps > 0 && state.flips.len() >= policy.max_flaps as usize;
    if limit_reached && !want.urgent && !want.manual {
        return (None, true);
    }
    if !want.manual {
        state.flips.push_back(now);
    }
    state.moved_by_hold = want.manual && want.target == Target::Fallback;
    state.active = want.target;
    state.last_change = Some((now, want.reason.clone()));
    let change = match want.target {
        Target::Fallback => Change::FailedOver {
            reason: want.reason,
            detected_from: primary.iter().filter_map(|p| p.detected_from).max(),
        },
        Target::Primary => Change::FailedBack {
            reason: want.reason,
        },
    };
    (Some(change), false)
}

type Members = BTreeMap<String, Membership>;

/// Every pod's membership for the chosen target, and whether the primary is in panic (no pod
/// passes probing but the kubelet has Ready ones, which then all keep serving).
fn membership(
    active: Target,
    policy: &FailoverPolicy,
    primary: &[PodView],
    fallback_pods: &[PodView],
    healthy: u32,
) -> (Members, Members, bool) {
    let all = |pods: &[PodView], m: Membership| pods.iter().map(|p| (p.name.clone(), m)).collect();
    match active {
        Target::Primary => {
            let panic = in_panic(policy, primary, healthy);
            let ejected = ejected(policy, primary);
            let p = primary
                .iter()
                .map(|p| {
                    let out = !panic && ejected.contains(p.name.as_str());
                    let m = if out { Membership::Out } else { Membership::In };
                    (p.name.clone(), m)
                })
                .collect();
            (p, all(fallback_pods, Membership::Out), panic)
        }
        Target::Fallback => {
            let f = fallback_pods
                .iter()
                .map(|p| {
                    let m = if p.serves() {
                        Membership::In
                    } else {
                        Membership::Out
                    };
                    (p.name.clone(), m)
                })
                .collect();
            (all(primary, Membership::Out), f, false)
        }
    }
}

/// Whether the primary panics: kubelet-Ready pods exist but fewer than the panic threshold (or
/// none) pass probing.
fn in_panic(policy: &FailoverPolicy, primary: &[PodView], healthy: u32) -> bool {
    let total = u64::try_from(primary.len()).unwrap_or(u64::MAX);
    let below = u64::from(healthy) * 100 < u64::from(policy.panic_threshold_percent) * total;
    (healthy == 0 || below) && primary.iter().any(|p| p.kubelet_ready)
}

/// The primary pods to take out of traffic: kubelet-Ready pods failing probing, at most
/// `maxEjectionPercent` of all pods (rounded down, at least one), earliest detection first.
fn ejected<'a>(
    policy: &FailoverPolicy,
    primary: &'a [PodView],
) -> std::collections::BTreeSet<&'a str> {
    let mut failing: Vec<&PodView> = primary
        .iter()
        .filter(|p| p.kubelet_ready && !p.healthy)
        .collect();
    if policy.max_ejection_percent < 100 {
        let total = primary.len();
        let pct = usize::try_from(policy.max_ejection_percent).unwrap_or(100);
        let cap = (total * pct / 100).max(1);
        // `None` (no detection time) sorts first: such a pod has failed since before we knew.
        failing.sort_by(|a, b| (a.detected_from, &a.name).cmp(&(b.detected_from, &b.name)));
        failing.truncate(cap);
    }
    failing.into_iter().map(|p| p.name.as_str()).collect()
}

/// The one-line explanation shown in status.
fn explain(
    active: Target,
    panic: bool,
    held: bool,
    a: &Assessment<'_>,
    primary: &[PodView],
) -> String {
    let (healthy, total, fallback_healthy) = (a.healthy, a.total, a.fallback_healthy);
    match (active, panic, held) {
        (Target::Fallback, _, _) => format!(
            "traffic on fallback ({fallback_healthy} healthy pods); primary has {healthy} of {total} healthy"
        ),
        (Target::Primary, true, _) => format!(
            "panic: no pod passes probing; keeping the {} kubelet-ready pods",
            primary.iter().filter(|p| p.kubelet_ready).count()
        ),
        (Target::Primary, false, true) => {
            format!("flapping: holding primary with {healthy} of {total} healthy pods")
        }
        (Target::Primary, false, false) => format!("{healthy} of {total} pods healthy"),
    }
}

fn diff_members(
    before: &BTreeMap<String, Membership>,
    after: &BTreeMap<String, Membership>,
    pods: &[PodView],
    fallback: bool,
    out: &mut Vec<PodChange>,
) {
    for p in pods {
        let Some(to) = after.get(&p.name).copied() else {
            continue;
        };
        // A pod seen for the first time starts from the default: In for primary pods, Out for
        // fallback pods.
        let default = if fallback {
            Membership::Out
        } else {
            Membership::In
        };
        let from = before.get(&p.name).copied().unwrap_or(default);
        if from != to {
            out.push(PodChange {
                pod: p.name.clone(),
                fallback,
                to,
                detected_from: p.detected_from,
            });
        }
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
