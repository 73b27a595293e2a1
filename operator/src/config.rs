//! Runtime configuration of the operator; its defaults are the CLI defaults.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use std::time::Duration;

use crate::admission::AdmissionPolicy;
use crate::health::DEFAULT_STALL_AFTER;
use crate::leader::LeaseTiming;
use crate::notify::WebhookConfig;

/// Default address of the metrics/health server.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080);
/// Default number of MicroServices reconciled at the same time.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// How [`crate::run`] runs the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`; `None` serves nothing (tests).
    pub metrics_addr: Option<SocketAddr>,
    /// Run leader election on the `flotilla-operator` Lease; only the leader reconciles.
    pub leader_election: bool,
    /// Namespace of the Lease; `None` means `$POD_NAMESPACE`, else the client's default.
    pub leader_election_namespace: Option<String>,
    /// Identity in the Lease; `None` means `$POD_NAME` (or the host name) plus a random suffix.
    pub identity: Option<String>,
    /// Lease timing.
    pub lease_timing: LeaseTiming,
    /// MicroServices reconciled concurrently (a bound on API load, not on the fleet size).
    pub concurrency: u16,
    /// Watch only this namespace; `None` watches all namespaces.
    pub watch_namespace: Option<String>,
    /// `/healthz` fails when reconciles in flight or the prober make no progress for this long.
    pub stall_after: Duration,
    /// PEM file of the key that signs traffic verdicts; `None` makes one up at start-up.
    pub verdict_key_file: Option<PathBuf>,
    /// PEM file of the next verdict key during a rotation (published, not used to sign).
    pub verdict_next_key_file: Option<PathBuf>,
    /// Whether `stickyConnections: Restart` may evict pods.
    pub sticky_restarts: bool,
    /// Whether the prober keeps a readiness watch open on pods that support one (changes
    /// reported as they happen, see `failover::watch`); off, every pod is probed each period.
    pub readiness_watch: bool,
    /// Roll a MicroService's pods when a Secret or ConfigMap its `env` references changes
    /// (watches Secrets and ConfigMaps, reads the referenced ones; needs get/list/watch on
    /// Secrets). Off: no config digest in pod templates and no such watch.
    pub rollout_on_config_change: bool,
    /// What MicroServices may ask for; the default restricts nothing.
    pub policy: AdmissionPolicy,
    /// The webhook significant Events are notified to (see [`crate::notify`]); `None` sends none.
    pub notifications: Option<WebhookConfig>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            metrics_addr: Some(DEFAULT_METRICS_ADDR),
            leader_election: false,
            leader_election_namespace: None,
            identity: None,
            lease_timing: LeaseTiming::default(),
            concurrency: DEFAULT_CONCURRENCY,
            watch_namespace: None,
            stall_after: DEFAULT_STALL_AFTER,
            verdict_key_file: None,
            verdict_next_key_file: None,
            sticky_restarts: false,
            readiness_watch: true,
            rollout_on_config_change: false,
            policy: AdmissionPolicy::default(),
            notifications: None,
        }
    }
}
