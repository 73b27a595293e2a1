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
//! succeeded). Past that deadline [`Leadership::is_leading`] turns false on its own clock, so
//! every writer that checks it stops before a standby could consider the lease expired.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;

use crate::error::status_code;

/// Name of the Lease used by the operator.
pub const LEASE_NAME: &str = "flotilla-operator";

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
pub enum Decision {
    /// No lease object: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds a live lease.
    Wait,
}

/// The record fields that show a holder is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew: Option<Timestamp>,
}

/// Decides from the lease record, the time this record was first observed unchanged, and now.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    observed_since: Instant,
    now: Instant,
    duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::TakeOver,
        Some(_) if now.saturating_duration_since(observed_since) >= duration => Decision::TakeOver,
        Some(_) => Decision::Wait,
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
}

/// Why a write gated by [`Leadership::write`] was not completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteLapsed {
    /// This replica did not lead when the write was due; nothing was sent.
    #[error("not writing: this replica does not lead")]
    NotLeading,
    /// The write did not finish within its budget (its timeout, or the time left before the
    /// renew deadline).
    #[error("the write did not finish within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    No,
    Until(Instant),
    Unbounded,
}

/// Whether this replica may write now: a handle every writer checks immediately before each
/// write. Leadership held through a lease ends by itself at the renew deadline, even if the task
/// renewing the lease is stuck in a hanging call.
#[derive(Debug, Clone)]
pub struct Leadership(watch::Receiver<Lead>);

/// Grants and revokes [`Leadership`]; held by whoever runs the election.
#[derive(Debug)]
pub struct LeadershipSetter(watch::Sender<Lead>);

impl Leadership {
    /// A handle that is not leading, and its setter.
    pub fn new() -> (LeadershipSetter, Leadership) {
        let (tx, rx) = watch::channel(Lead::No);
        (LeadershipSetter(tx), Leadership(rx))
    }

    /// Whether writes are allowed at this instant.
    pub fn is_leading(&self) -> bool {
        match *self.0.borrow() {
            Lead::No => false,
            Lead::Until(t) => Instant::now() < t,
            Lead::Unbounded => true,
        }
    }

    /// How long a write starting now may take: `None` when not leading, else `max` capped at
    /// the time left before the renew deadline. A write bounded by it ends (on this side) before
    /// a standby could consider the lease expired, even if the API server hangs it.
    pub fn write_budget(&self, max: Duration) -> Option<Duration> {
        match *self.0.borrow() {
            Lead::No => None,
            Lead::Until(t) => {
                let left = t.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(max))
            }
            Lead::Unbounded => Some(max),
        }
    }

    /// Runs the write `call` if this replica leads, bounded by [`Leadership::write_budget`].
    pub async fn write<T>(
        &self,
        max: Duration,
        call: impl Future<Output = T>,
    ) -> Result<T, WriteLapsed> {
        let budget = self.write_budget(max).ok_or(WriteLapsed::NotLeading)?;
        tokio::time::timeout(budget, call)
            .await
            .map_err(|_| WriteLapsed::Timeout(budget))
    }

    /// Completes when leadership was granted, renewed or revoked; an error once the setter is
    /// gone. Expiry at the deadline is not announced: check [`Leadership::is_leading`].
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.0.changed().await
    }
}

impl LeadershipSetter {
    /// Leading until `deadline` (extended by each renewal).
    pub fn lead_until(&self, deadline: Instant) {
        self.0.send_replace(Lead::Until(deadline));
    }

    /// Leading without election (a single replica).
    pub fn lead_unbounded(&self) {
        self.0.send_replace(Lead::Unbounded);
    }

    /// Not leading.
    pub fn stop(&self) {
        self.0.send_replace(Lead::No);
    }
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
}

impl LeaderElector {
    /// A candidate named `identity` for the Lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, identity: impl Into<String>, timing: LeaseTiming) -> Self {
        Self {
            api,
            identity: identity.into(),
            timing,
            observed: Mutex::new(None),
        }
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
            acquire_time: if takeover || previous.is_none() {
                Some(now.clone())
            } else {
                previous.and_then(|p| p.acquire_time.clone())
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
        let end = Instant::now() + within;
        let left = || end.saturating_duration_since(Instant::now());
        let current = bounded("get Lease", left(), self.api.get_opt(LEASE_NAME)).await?;
        // A Lease created without a spec (as the Helm chart creates it) is free.
        let free = LeaseSpec::default();
        let spec = current.as_ref().map(|l| l.spec.as_ref().unwrap_or(&free));
        let now = Instant::now();
        let since = self.observe(spec, now);
        match decide(spec, &self.identity, since, now, self.timing.lease_duration) {
            Decision::Wait => Ok(false),
            Decision::Create => {
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
                    Err(e) => Err(e),
                }
            }
            d @ (Decision::Renew | Decision::TakeOver) => {
                let Some(mut lease) = current.clone() else {
                    return Ok(false);
                };
                lease.spec = Some(self.held_spec(spec, d == Decision::TakeOver));
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
        }
    }

    /// Gives the lease up if this candidate holds it, so a standby takes over at once. Bounded
    /// by one renew interval: a release that cannot finish leaves the lease to expire.
    pub async fn release(&self) -> Result<(), LeaseError> {
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
        spec.renew_time = None;
        spec.acquire_time = None;
        spec.lease_duration_seconds = Some(1);
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
        let mut deadline = match *leadership_deadline(leadership) {
            Lead::Until(t) => t,
            _ => Instant::now() + deadline_after,
        };
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

fn leadership_deadline(s: &LeadershipSetter) -> watch::Ref<'_, Lead> {
    s.0.borrow()
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

    /// No lease → create; ours → renew; free → take over; someone else's → wait until it has
    /// been unchanged for a full lease duration.
    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "a", t0, t0, d), Decision::Create);
        assert_eq!(
            decide(Some(&held_by(Some("a"))), "a", t0, t0, d),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held_by(None)), "a", t0, t0, d),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&held_by(Some(""))), "a", t0, t0, d),
            Decision::TakeOver
        );
        let b = held_by(Some("b"));
        assert_eq!(
            decide(Some(&b), "a", t0, t0 + Duration::from_secs(14), d),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&b), "a", t0, t0 + Duration::from_secs(15), d),
            Decision::TakeOver
        );
    }

    /// A write may take at most its own timeout, and never past the renew deadline; without
    /// leadership nothing is sent.
    #[tokio::test]
    async fn writes_end_before_the_renew_deadline() {
        let (set, lead) = Leadership::new();
        let max = Duration::from_secs(8);
        assert_eq!(lead.write_budget(max), None);
        assert_eq!(
            lead.write(max, async { 1 }).await,
            Err(WriteLapsed::NotLeading)
        );
        set.lead_unbounded();
        assert_eq!(lead.write_budget(max), Some(max));
        set.lead_until(Instant::now() + Duration::from_millis(200));
        let budget = lead.write_budget(max).unwrap_or(max);
        assert!(budget <= Duration::from_millis(200), "{budget:?}");
        let started = Instant::now();
        let hung = lead.write(max, std::future::pending::<()>()).await;
        assert!(matches!(hung, Err(WriteLapsed::Timeout(_))), "{hung:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!lead.is_leading());
        assert_eq!(lead.write_budget(max), None);
    }
}
