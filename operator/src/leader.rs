//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas can run and only one
//! reconciles.
//!
//! Like client-go, expiry is judged on the local clock: a lease held by someone else counts as
//! expired when its record (holder, renew time) has not changed for `lease_duration` since this
//! replica first saw it, so clock skew between replicas does not matter. Writes use the lease's
//! resourceVersion, so two candidates racing for it cannot both win.
//!
//! One leader even when the API server hangs: every lease call is bounded by the time left before
//! the renew deadline (lease duration minus one renew interval after the last renewal that
//! succeeded). Past that deadline [`crate::write::Leadership::is_leading`] turns false on its own clock, so
//! every writer that checks it stops before a standby could consider the lease expired.
//!
//! One leader even when someone edits the Lease: a Lease that is missing, or that nobody holds
//! without having released it (holder or renew time cleared by hand, or the chart's fresh Lease),
//! is created or taken by a standby only after it has looked that way for a full lease
//! duration, because a live leader may still be writing. The leader itself writes its claim back
//! at once. Only a Lease its holder released (no holder, `leaseDurationSeconds: 1`, a renew
//! time, as client-go and [`LeaderElector::release`] leave it) is taken at once.
//!
//! No write after the release: [`LeaderElector::release`] first refuses new writes, then waits
//! until every write started through [`crate::write::Leadership::write`] has been answered or cut at its
//! deadline, and only then gives the Lease up.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;

use crate::error::status_code;
use crate::health::Health;
use crate::write::LeadershipSetter;

/// Name of the Lease used by the operator.
pub const LEASE_NAME: &str = "flotilla-operator";

/// The `leaseDurationSeconds` a released Lease carries (client-go writes the same): with no
/// holder and a renew time, it marks a Lease given up by its holder, free at once.
pub const RELEASED_DURATION_SECONDS: i32 = 1;

/// How long past the renew deadline a release waits for writes that were cut at that deadline
/// to be dropped by their tasks.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Timing of the election.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseTiming {
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// How often a standby retries to acquire.
    pub retry_interval: Duration,
}

impl Default for LeaseTiming {
    /// client-go's defaults scaled down: 15 s lease, renew every 5 s, retry every 2 s.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(2),
        }
    }
}

/// What to do with the lease, given its current record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// No lease object: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds a live lease, or a free or missing one may still have a live leader.
    Wait,
}

/// The record fields that show a holder is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    exists: bool,
    holder: Option<String>,
    renew: Option<Timestamp>,
}

/// What this candidate knows besides the Lease's record.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// This candidate holds the lease by its own clock (its last renewal is within the renew
    /// deadline).
    pub leading: bool,
    /// When this candidate first saw the record (existence, holder, renew time) as it is now.
    pub since: Instant,
}

/// Whether `spec` is a Lease released by its holder: no holder, a renew time, and
/// [`RELEASED_DURATION_SECONDS`].
fn released(spec: &LeaseSpec) -> bool {
    spec.holder_identity.as_deref().is_none_or(str::is_empty)
        && spec.renew_time.is_some()
        && spec.lease_duration_seconds == Some(RELEASED_DURATION_SECONDS)
}

/// Decides from the lease record (`None`: no Lease), what this candidate has seen, and now.
///
/// A live leader recreates a missing Lease and writes itself back into one whose holder was
/// cleared, at once. Anyone else waits until the record has been unchanged for `duration`,
/// except for a Lease its holder released.
pub fn lease_action(
    spec: Option<&LeaseSpec>,
    me: &str,
    seen: Seen,
    now: Instant,
    duration: Duration,
) -> LeaseAction {
    let stale = now.saturating_duration_since(seen.since) >= duration;
    let Some(spec) = spec else {
        return if seen.leading || stale {
            LeaseAction::Create
        } else {
            LeaseAction::Wait
        };
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => LeaseAction::Renew,
        None | Some("") if seen.leading => LeaseAction::Renew,
        None | Some("") if released(spec) || stale => LeaseAction::TakeOver,
        None | Some("") => LeaseAction::Wait,
        Some(_) if seen.leading => LeaseAction::Wait,
        Some(_) if stale => LeaseAction::TakeOver,
        Some(_) => LeaseAction::Wait,
    }
}

/// Why a lease call failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API server answered with an error, or could not be reached.
    #[error("{action} failed: {source}")]
    Kube {
        /// The lease operation.
        action: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The call did not finish in the time it was given.
    #[error("{action} timed out after {after:?}")]
    Timeout {
        /// The lease operation.
        action: &'static str,
        /// The time it was given.
        after: Duration,
    },
    /// Writes were still in flight past their deadline, so the Lease was not released (a write
    /// could otherwise land after a standby took over); it expires instead.
    #[error("{0} write(s) still in flight past their deadline; not releasing the Lease")]
    WritesInFlight(usize),
}

async fn bounded<T>(
    action: &'static str,
    within: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseError> {
    match tokio::time::timeout(within, call).await {
        Ok(r) => r.map_err(|source| LeaseError::Kube { action, source }),
        Err(_) => Err(LeaseError::Timeout {
            action,
            after: within,
        }),
    }
}

/// One candidate for the lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    identity: String,
    timing: LeaseTiming,
    observed: Mutex<Option<(Record, Instant)>>,
    /// The renew deadline of this candidate's last successful claim, while it holds the lease.
    held_until: Mutex<Option<Instant>>,
    health: Option<Health>,
}

impl LeaderElector {
    /// A candidate named `identity` for the Lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, identity: impl Into<String>, timing: LeaseTiming) -> Self {
        Self {
            api,
            identity: identity.into(),
            timing,
            observed: Mutex::new(None),
            held_until: Mutex::new(None),
            health: None,
        }
    }

    /// Reports in `health` (and so in `/healthz`) when the election cannot go on: the Lease is
    /// missing and this replica may not create it.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    fn held_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.held_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, problem: Option<String>) {
        if let Some(h) = &self.health {
            h.election_problem(problem);
        }
    }

    fn namespace(&self) -> &str {
        self.api.namespace().unwrap_or("default")
    }

    /// The timing in use.
    pub fn timing(&self) -> &LeaseTiming {
        &self.timing
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How long after a successful renewal (counted from when it was sent) the leader stops
    /// writing: one renew interval before the lease could expire for a standby.
    pub fn renew_deadline(&self) -> Duration {
        self.timing
            .lease_duration
            .saturating_sub(self.timing.renew_interval)
    }

    fn observe(&self, spec: Option<&LeaseSpec>, now: Instant) -> Instant {
        let rec = Record {
            exists: spec.is_some(),
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        };
        let mut guard = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some((r, since)) if *r == rec => *since,
            _ => {
                *guard = Some((rec, now));
                now
            }
        }
    }

    fn held_spec(&self, previous: Option<&LeaseSpec>, takeover: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(15),
            ),
            acquire_time: match previous.and_then(|p| p.acquire_time.clone()) {
                Some(t) if !takeover => Some(t),
                _ => Some(now.clone()),
            },
            renew_time: Some(now),
            lease_transitions: Some(if takeover {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// Tries to acquire or renew the lease, giving the whole attempt at most `within`.
    /// `Ok(true)` when this candidate holds it afterwards.
    pub async fn try_acquire_or_renew(&self, within: Duration) -> Result<bool, LeaseError> {
        let started = Instant::now();
        let end = started + within;
        let left = || end.saturating_duration_since(Instant::now());
        let current = bounded("get Lease", left(), self.api.get_opt(LEASE_NAME)).await?;
        // A Lease created without a spec (as the Helm chart creates it) is free.
        let free = LeaseSpec::default();
        let spec = current.as_ref().map(|l| l.spec.as_ref().unwrap_or(&free));
        let now = Instant::now();
        let seen = Seen {
            leading: self.held_until().is_some_and(|t| now < t),
            since: self.observe(spec, now),
        };
        let held = match lease_action(spec, &self.identity, seen, now, self.timing.lease_duration) {
            LeaseAction::Wait => Ok(false),
            LeaseAction::Create => {
                if seen.leading {
                    tracing::warn!(lease = LEASE_NAME, "the Lease was deleted; recreating it");
                }
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.held_spec(None, false)),
                };
                let pp = PostParams::default();
                let create = self.api.create(&pp, &lease);
                match bounded("create Lease", left(), create).await {
                    Ok(_) => Ok(true),
                    Err(LeaseError::Kube { source, .. }) if status_code(&source) == Some(409) => {
                        Ok(false)
                    }
                    Err(e) => {
                        self.report(Some(format!(
                            "leader election stalled: the Lease {}/{LEASE_NAME} does not exist \
                             and this replica could not create it ({e}); create it again \
                             (`helm upgrade` of the chart does)",
                            self.namespace()
                        )));
                        return Err(e);
                    }
                }
            }
            d @ (LeaseAction::Renew | LeaseAction::TakeOver) => {
                let Some(mut lease) = current.clone() else {
                    return Ok(false);
                };
                lease.spec = Some(self.held_spec(spec, d == LeaseAction::TakeOver));
                let pp = PostParams::default();
                let replace = self.api.replace(LEASE_NAME, &pp, &lease);
                match bounded("update Lease", left(), replace).await {
                    Ok(_) => Ok(true),
                    Err(LeaseError::Kube { source, .. }) if status_code(&source) == Some(409) => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if current.is_some() {
            self.report(None);
        }
        match held {
            Ok(true) => *self.held_until() = Some(started + self.renew_deadline()),
            Ok(false) => *self.held_until() = None,
            Err(_) => {}
        }
        held
    }

    /// Gives the lease up if this candidate holds it, so a standby takes over at once. First
    /// revokes `leadership` (new writes are refused) and waits for the writes in flight: they
    /// end by the renew deadline, when they are cut. Should one still be in flight after that,
    /// the lease is left to expire, so no write lands after a standby took over. The release
    /// itself is bounded by one renew interval; one that cannot finish leaves the lease to
    /// expire.
    pub async fn release(&self, leadership: &LeadershipSetter) -> Result<(), LeaseError> {
        leadership.stop();
        let deadline = self.held_until().take();
        let wait = deadline.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        }) + DRAIN_GRACE;
        let waiting = leadership.writes_in_flight();
        if waiting > 0 {
            tracing::info!(
                writes = waiting,
                "waiting for writes in flight before releasing the lease"
            );
        }
        let left = leadership.drain(wait).await;
        if left > 0 {
            return Err(LeaseError::WritesInFlight(left));
        }
        let within = self.timing.renew_interval;
        let Some(mut lease) = bounded("get Lease", within, self.api.get_opt(LEASE_NAME)).await?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.acquire_time = None;
        spec.lease_duration_seconds = Some(RELEASED_DURATION_SECONDS);
        let pp = PostParams::default();
        let replace = self.api.replace(LEASE_NAME, &pp, &lease);
        bounded("release Lease", within, replace).await?;
        Ok(())
    }

    /// Waits until this candidate holds the lease, retrying every `retry_interval`, and grants
    /// `leadership` until the renew deadline of the attempt that won. Returns `false` if `stop`
    /// completed first.
    pub async fn acquire(
        &self,
        stop: &mut (impl Future<Output = ()> + Unpin),
        leadership: &LeadershipSetter,
    ) -> bool {
        loop {
            let started = Instant::now();
            let attempt = self.try_acquire_or_renew(self.renew_deadline());
            tokio::select! {
                _ = &mut *stop => return false,
                r = attempt => match r {
                    Ok(true) => {
                        leadership.lead_until(started + self.renew_deadline());
                        return true;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
                },
            }
            tokio::select! {
                _ = &mut *stop => return false,
                _ = tokio::time::sleep(self.timing.retry_interval) => {}
            }
        }
    }

    /// Renews the lease every `renew_interval`, extending `leadership` to the renew deadline of
    /// each renewal. Each attempt may take only the time left before the current deadline; once
    /// it has passed without a renewal (or another replica holds the lease), leadership is
    /// revoked and the reason returned.
    pub async fn keep_renewing(&self, leadership: &LeadershipSetter) -> String {
        let deadline_after = self.renew_deadline();
        let mut deadline = leadership
            .deadline()
            .unwrap_or_else(|| Instant::now() + deadline_after);
        let mut wait = self.timing.renew_interval;
        let reason = loop {
            let now = Instant::now();
            tokio::time::sleep(wait.min(deadline.saturating_duration_since(now))).await;
            let started = Instant::now();
            let left = deadline.saturating_duration_since(started);
            if left.is_zero() {
                break "the lease was not renewed before the renew deadline".to_string();
            }
            match self.try_acquire_or_renew(left).await {
                Ok(true) => {
                    deadline = started + deadline_after;
                    leadership.lead_until(deadline);
                    wait = self.timing.renew_interval;
                }
                Ok(false) => break "another replica holds the lease".to_string(),
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    if Instant::now() >= deadline {
                        break format!("could not renew the lease before the renew deadline: {e}");
                    }
                    wait = self.timing.retry_interval;
                }
            }
        };
        leadership.stop();
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(who: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: who.map(str::to_string),
            ..LeaseSpec::default()
        }
    }

    fn released() -> LeaseSpec {
        LeaseSpec {
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_duration_seconds: Some(RELEASED_DURATION_SECONDS),
            ..LeaseSpec::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    /// A standby's view: `after` since it first saw the record.
    fn standby(spec: Option<&LeaseSpec>, t0: Instant, after: u64) -> LeaseAction {
        let seen = Seen {
            leading: false,
            since: t0,
        };
        lease_action(spec, "a", seen, t0 + Duration::from_secs(after), D)
    }

    /// The leader's view, at once.
    fn leader(spec: Option<&LeaseSpec>, t0: Instant) -> LeaseAction {
        let seen = Seen {
            leading: true,
            since: t0,
        };
        lease_action(spec, "a", seen, t0, D)
    }

    /// Ours → renew; someone else's → wait until it has been unchanged for a full lease
    /// duration; released by its holder → take over at once.
    #[test]
    fn decisions() {
        let t0 = Instant::now();
        assert_eq!(
            standby(Some(&held_by(Some("a"))), t0, 0),
            LeaseAction::Renew
        );
        assert_eq!(leader(Some(&held_by(Some("a"))), t0), LeaseAction::Renew);
        let b = held_by(Some("b"));
        assert_eq!(standby(Some(&b), t0, 14), LeaseAction::Wait);
        assert_eq!(standby(Some(&b), t0, 15), LeaseAction::TakeOver);
        assert_eq!(standby(Some(&released()), t0, 0), LeaseAction::TakeOver);
    }

    /// A reset Lease (holder cleared, renew time cleared, or no spec as the chart creates it)
    /// may still have a live leader: a standby takes it only after a full lease duration, the
    /// leader writes itself back at once.
    #[test]
    fn a_reset_lease_is_taken_only_after_a_lease_duration() {
        let t0 = Instant::now();
        let cleared = LeaseSpec {
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        let no_renew_time = LeaseSpec {
            renew_time: None,
            ..released()
        };
        for spec in [held_by(None), held_by(Some("")), cleared, no_renew_time] {
            assert_eq!(standby(Some(&spec), t0, 0), LeaseAction::Wait, "{spec:?}");
            assert_eq!(standby(Some(&spec), t0, 14), LeaseAction::Wait, "{spec:?}");
            assert_eq!(
                standby(Some(&spec), t0, 15),
                LeaseAction::TakeOver,
                "{spec:?}"
            );
            assert_eq!(leader(Some(&spec), t0), LeaseAction::Renew, "{spec:?}");
        }
    }

    /// A missing Lease may have been deleted under a live leader: the leader recreates it at
    /// once, a standby only once it has been missing for a full lease duration.
    #[test]
    fn a_missing_lease_is_recreated_by_its_leader_at_once() {
        let t0 = Instant::now();
        assert_eq!(leader(None, t0), LeaseAction::Create);
        assert_eq!(standby(None, t0, 0), LeaseAction::Wait);
        assert_eq!(standby(None, t0, 14), LeaseAction::Wait);
        assert_eq!(standby(None, t0, 15), LeaseAction::Create);
    }

    /// A leader that finds someone else in the Lease has lost it, however long it looked at it.
    #[test]
    fn a_leader_that_finds_another_holder_stops() {
        let t0 = Instant::now();
        let seen = Seen {
            leading: true,
            since: t0,
        };
        let b = held_by(Some("b"));
        assert_eq!(
            lease_action(Some(&b), "a", seen, t0 + D * 2, D),
            LeaseAction::Wait
        );
    }
}
