//! What every reconcile shares: the client, the Event recorder, the metrics, the caches, and the
//! per-MicroService retry backoff (dropped when the MicroService is deleted).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use flotilla_crds::MicroService;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource};
use rand::Rng;

use crate::admission::AdmissionPolicy;
use crate::build::OperatorInputs;
use crate::cache::Stores;
use crate::events::EventSink;
use crate::metrics::Metrics;
use crate::write::{publish_event, Leadership};

/// First retry delay after a transient error; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Shared state of all reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event publisher (events.k8s.io).
    pub recorder: EventSink,
    /// Metrics.
    pub metrics: Metrics,
    /// Caches.
    pub stores: Stores,
    /// Whether this replica may write; checked before every write.
    pub leadership: Leadership,
    /// What the builders take from the operator (the verdict keys).
    pub build_inputs: OperatorInputs,
    /// What MicroServices may ask for (`--allowed-*`); open unless set with [`Self::with_policy`].
    pub policy: AdmissionPolicy,
    /// Whether pod templates carry the digest of the Secrets and ConfigMaps their `env` reads
    /// (`--rollout-on-config-change`); off unless set with [`Self::with_config_rollouts`].
    pub config_rollouts: bool,
    /// Consecutive transient failures per MicroService, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<MicroService>, u32>>,
}

impl Context {
    /// A context over the given client, recorder, metrics, caches, leadership and builder
    /// inputs.
    pub fn new(
        client: Client,
        recorder: EventSink,
        metrics: Metrics,
        stores: Stores,
        leadership: Leadership,
        build_inputs: OperatorInputs,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            stores,
            leadership,
            build_inputs,
            policy: AdmissionPolicy::default(),
            config_rollouts: false,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The same context, checking MicroServices against `policy`.
    pub fn with_policy(mut self, policy: AdmissionPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same context, rolling pods when a Secret or ConfigMap their `env` reads changes.
    pub fn with_config_rollouts(mut self, on: bool) -> Self {
        self.config_rollouts = on;
        self
    }

    /// Counts one more consecutive failure of `key` and returns the delay before its retry.
    pub fn next_backoff(&self, key: ObjectRef<MicroService>) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    /// Forgets the failures of `key` (it reconciled, or it is gone).
    pub fn reset_backoff(&self, key: &ObjectRef<MicroService>) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// How many MicroServices currently have backoff state.
    pub fn backoff_entries(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Publishes an Event about `ms` while leading, within the write timeout; a failure to
    /// publish is logged, never fatal (a replica that stopped leading stays silent).
    pub async fn publish(
        &self,
        ms: &MicroService,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        let oref = ms.object_ref(&());
        publish_event(&self.leadership, &self.recorder, &ev, &oref).await;
    }
}

/// Retry delay after `n` consecutive failures: exponential from 500 ms to 5 min, ±20 % jitter.
pub fn backoff(n: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(20)));
    let capped = exp.min(BACKOFF_MAX);
    let jitter = rand::rng().random_range(0.8..1.2);
    capped.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff doubles from 500 ms and stops at 5 minutes (within jitter).
    #[test]
    fn backoff_grows_and_caps() {
        let b1 = backoff(1);
        assert!(
            b1 >= Duration::from_millis(400) && b1 <= Duration::from_millis(600),
            "{b1:?}"
        );
        let b3 = backoff(3);
        assert!(
            b3 >= Duration::from_millis(1600) && b3 <= Duration::from_millis(2400),
            "{b3:?}"
        );
        let big = backoff(50);
        assert!(
            big <= Duration::from_secs(360) && big >= Duration::from_secs(240),
            "{big:?}"
        );
    }
}
