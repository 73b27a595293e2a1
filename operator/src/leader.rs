//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas can run and only one
//! reconciles.
//!
//! Like client-go, expiry is judged on the local clock: a lease held by someone else counts as
//! expired when its record (holder, renew time) has not changed for `lease_duration` since this
//! replica first saw it, so clock skew between replicas does not matter. Writes use the lease's
//! resourceVersion, so two candidates racing for it cannot both win.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;

use crate::error::{status_code, Error};

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

    /// Tries to acquire or renew the lease. `Ok(true)` when this candidate holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let current = self
            .api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| Error::kube("get Lease", e))?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
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
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(e) if status_code(&e) == Some(409) => Ok(false),
                    Err(e) => Err(Error::kube("create Lease", e)),
                }
            }
            d @ (Decision::Renew | Decision::TakeOver) => {
                let Some(mut lease) = current.clone() else {
                    return Ok(false);
                };
                lease.spec = Some(self.held_spec(spec, d == Decision::TakeOver));
                match self
                    .api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if status_code(&e) == Some(409) => Ok(false),
                    Err(e) => Err(Error::kube("update Lease", e)),
                }
            }
        }
    }

    /// Gives the lease up if this candidate holds it, so a standby takes over at once.
    pub async fn release(&self) -> Result<(), Error> {
        let Some(mut lease) = self
            .api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| Error::kube("get Lease", e))?
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
        self.api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
            .map_err(|e| Error::kube("release Lease", e))?;
        Ok(())
    }

    /// Waits until this candidate holds the lease, retrying every `retry_interval`. Returns
    /// `false` if `stop` completed first.
    pub async fn acquire(
        &self,
        stop: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::select! {
                _ = &mut *stop => return false,
                _ = tokio::time::sleep(self.timing.retry_interval) => {}
            }
        }
    }

    /// Renews the lease every `renew_interval` until renewals have failed for longer than the
    /// lease duration minus one renew interval (the renew deadline), then returns the error.
    pub async fn keep_renewing(&self) -> Error {
        let deadline = self
            .timing
            .lease_duration
            .saturating_sub(self.timing.renew_interval);
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.timing.renew_interval).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    return Error::LeadershipLost("another replica holds the lease".into())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    if last_ok.elapsed() > deadline {
                        return Error::LeadershipLost(format!("could not renew the lease: {e}"));
                    }
                }
            }
        }
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
}
