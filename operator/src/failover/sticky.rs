//! Sticky connections: an ejected pod whose API request counter keeps rising is still reached by
//! clients over connections opened before it was ejected (kube-proxy never moves an established
//! connection). This module notices it from successive scrapes and, when the service opts in,
//! picks at most one such pod to restart under a rate limit.
//!
//! Pure: scrape values, verdicts and the clock in; a verdict per pod and a restart choice out.
//! The engine feeds [`StickyWatch`]; the writer performs a restart.

use std::time::{Duration, Instant};

use super::decide::{Decision, Membership, Target};
use super::policy::{FailoverPolicy, Mode, StickyAction};

/// Time after a pod is first probed as ejected before its requests count: a pod that honours
/// the traffic verdict closes its connections within a probe period, and requests already in
/// flight finish. Two seconds are four default probe periods.
pub const GRACE: Duration = Duration::from_secs(2);

/// Requests after the grace period that make an ejected pod sticky. More than one, so a single
/// straggler (a request that raced the close) is not reported.
pub const MIN_REQUESTS: u64 = 3;

/// A sticky pod stops being reported when its counter has not risen for this long (its clients
/// went away or reconnected elsewhere).
pub const QUIET_AFTER: Duration = Duration::from_secs(5);

/// Shortest time between two restarts of sticky pods of one MicroService. A restart breaks
/// every connection of one pod; thirty seconds lets the Deployment replace it and clients
/// reconnect before the next pod is touched.
pub const RESTART_INTERVAL: Duration = Duration::from_secs(30);

/// What the engine remembers about one pod's traffic while it is ejected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StickyWatch {
    ejected_since: Option<Instant>,
    baseline: Option<f64>,
    last: Option<f64>,
    last_rise: Option<Instant>,
}

impl StickyWatch {
    /// Feeds one probe round: whether the pod is currently ejected (its verdict), and, when its
    /// metrics were scraped, its API request count (`total - probes`). A pod back in traffic
    /// starts over.
    pub fn record(&mut self, at: Instant, ejected: bool, api_requests: Option<f64>) {
        if !ejected {
            *self = Self::default();
            return;
        }
        let since = *self.ejected_since.get_or_insert(at);
        let Some(now) = api_requests.filter(|v| v.is_finite() && *v >= 0.0) else {
            return;
        };
        if at.saturating_duration_since(since) < GRACE {
            return;
        }
        match (self.baseline, self.last) {
            (Some(base), Some(last)) if now >= base && now >= last => {
                if now > last {
                    self.last_rise = Some(at);
                }
                self.last = Some(now);
            }
            // First count after the grace period, or a counter reset (the process restarted):
            // count from here.
            _ => {
                self.baseline = Some(now);
                self.last = Some(now);
                self.last_rise = None;
            }
        }
    }

    /// API requests answered since the grace period ended, while the pod was ejected; `None`
    /// when not ejected or not measured yet.
    pub fn requests(&self) -> Option<u64> {
        let (base, last) = (self.baseline?, self.last?);
        // Counter values are whole numbers; the saturating cast is the intended rounding.
        Some((last - base).max(0.0).round() as u64)
    }

    /// Whether clients still reach the pod: at least [`MIN_REQUESTS`] since the grace period,
    /// and the counter rose within [`QUIET_AFTER`].
    pub fn sticky(&self, now: Instant) -> bool {
        self.requests().is_some_and(|n| n >= MIN_REQUESTS)
            && self
                .last_rise
                .is_some_and(|t| now.saturating_duration_since(t) < QUIET_AFTER)
    }
}

/// Restarts of sticky pods across all services within [`GLOBAL_WINDOW`]: however many
/// services misbehave at once, Flotilla breaks the connections of at most this many pods a
/// minute, so a bug or a bad day cannot turn it into a pod killer.
pub const GLOBAL_RESTARTS: usize = 3;

/// The window of [`GLOBAL_RESTARTS`].
pub const GLOBAL_WINDOW: Duration = Duration::from_secs(60);

/// A sticky pod of one primary service, as the decider's caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyPod {
    /// Pod name.
    pub name: String,
    /// API requests since it was ejected.
    pub requests: u64,
    /// Whether the pod's own probes fail: it is out of traffic for its own failure, not
    /// because the whole service failed over. Only such a pod may be restarted.
    pub failing: bool,
}

/// The pod to restart now, if any: the sticky pod with the most requests, provided the service
/// opted in (`Restart`, Enforce mode), no restart of this service happened within
/// [`RESTART_INTERVAL`], the pod is out of traffic *for its own failure* (a healthy primary pod
/// that is out only because the service failed over is never touched), and the traffic's
/// target has at least `minHealthy` healthy pods outside panic — so a restart only ever removes
/// a failing pod that serves nobody by design, and never while the service is short of pods.
pub fn pick_restart<'a>(
    policy: &FailoverPolicy,
    d: &Decision,
    sticky: &'a [StickyPod],
    last_restart: Option<Instant>,
    now: Instant,
) -> Option<&'a StickyPod> {
    if policy.sticky != StickyAction::Restart || policy.mode != Mode::Enforce {
        return None;
    }
    if last_restart.is_some_and(|t| now.saturating_duration_since(t) < RESTART_INTERVAL) {
        return None;
    }
    let min = policy.min_healthy.max(1);
    let target_ok = match d.active {
        Target::Primary => !d.panic && d.healthy_pods >= min,
        Target::Fallback => d.fallback_healthy_pods >= min,
    };
    if !target_ok || d.invalid.is_some() {
        return None;
    }
    sticky
        .iter()
        .filter(|p| p.failing && d.primary_members.get(&p.name) == Some(&Membership::Out))
        .max_by(|a, b| {
            a.requests
                .cmp(&b.requests)
                .then_with(|| b.name.cmp(&a.name))
        })
}

/// What a restart choice reads besides the decision: the service's memory of its last restart,
/// the time status records, the pods' UIDs, the recent restarts of every service, and the clocks.
#[derive(Debug)]
pub struct RestartLimits<'a> {
    /// When this engine last restarted a pod of the service.
    pub remembered: Option<Instant>,
    /// `status.failover.lastStickyRestartTime`, written by whichever replica led.
    pub recorded: Option<jiff::Timestamp>,
    /// Restarts of every service within [`GLOBAL_WINDOW`] (the global cap), oldest first.
    pub recent: &'a mut std::collections::VecDeque<Instant>,
    /// Now, on this process's clock.
    pub now: Instant,
    /// Now, on the wall clock (for `recorded`).
    pub wall: jiff::Timestamp,
}

/// The restart to ask for now, with the pod's UID: [`pick_restart`] under the rate limit that
/// survives leader changes ([`last_restart`]), only for a pod whose UID is known, and only while
/// the global cap has room (the choice is then counted in `limits.recent`).
pub fn choose_restart<'a>(
    policy: &FailoverPolicy,
    d: &Decision,
    sticky: &'a [StickyPod],
    uid_of: impl Fn(&str) -> Option<String>,
    limits: RestartLimits<'_>,
) -> Option<(&'a StickyPod, String)> {
    let last = last_restart(limits.remembered, limits.recorded, limits.now, limits.wall);
    let pod = pick_restart(policy, d, sticky, last, limits.now)?;
    let uid = uid_of(&pod.name)?;
    if !global_room(limits.recent, limits.now) {
        return None;
    }
    limits.recent.push_back(limits.now);
    Some((pod, uid))
}

/// Restarts allowed by the global cap at `now`, given the times of recent restarts (older ones
/// are dropped from `recent`).
pub fn global_room(recent: &mut std::collections::VecDeque<Instant>, now: Instant) -> bool {
    while recent
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= GLOBAL_WINDOW)
    {
        recent.pop_front();
    }
    recent.len() < GLOBAL_RESTARTS
}

/// When the last restart of a service happened, as an instant of this process: the later of
/// what this engine remembers and the time status records (written by whichever replica led
/// then, before it evicted), so the rate limit holds across leader changes and restarts.
pub fn last_restart(
    remembered: Option<Instant>,
    recorded: Option<jiff::Timestamp>,
    now: Instant,
    wall_now: jiff::Timestamp,
) -> Option<Instant> {
    // A time in the future (clock skew) counts as now; one before this clock's origin is long
    // past and limits nothing.
    let from_status = recorded.and_then(|t| {
        let ago = wall_now
            .duration_since(t)
            .try_into()
            .unwrap_or(Duration::ZERO);
        now.checked_sub(ago)
    });
    remembered.max(from_status)
}

#[cfg(test)]
#[path = "sticky_tests.rs"]
mod tests;
