//! The failover engine's own configuration values.
//!
//! The engine reads these plain structs rather than the MicroService spec, so the spec can evolve
//! without touching the decision code; adapters from the API types live in `adapters.rs`. No I/O here.

use std::time::Duration;

/// How a service's pods are probed and judged (from `spec.health`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbePolicy {
    /// Time between two probes of one pod (jittered by the prober).
    pub period: Duration,
    /// A probe that has not answered within this time counts as failed.
    pub timeout: Duration,
    /// Consecutive failures that turn a healthy pod unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes that turn an unhealthy pod healthy.
    pub success_threshold: u32,
    /// HTTP path of the readiness endpoint, e.g. `/readyz`.
    pub readiness_path: String,
    /// HTTP path of the Prometheus endpoint, e.g. `/metrics`.
    pub metrics_path: String,
    /// Container port the pod listens on.
    pub port: u16,
    /// For a gRPC service, the health service name: readiness is `grpc.health.v1.Health/Check`
    /// instead of an HTTP GET of `readiness_path`, and errors are failing gRPC codes.
    pub grpc: Option<String>,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        Self {
            period: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
            failure_threshold: 2,
            success_threshold: 2,
            readiness_path: "/readyz".to_owned(),
            metrics_path: "/metrics".to_owned(),
            port: 8080,
            grpc: None,
        }
    }
}

/// Whether decisions are applied to traffic or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Decisions change pod membership labels.
    #[default]
    Enforce,
    /// Decisions are reported (status, Events, metrics) but traffic is never changed.
    Observe,
}

/// How a service fails over (from `spec.failover`).
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverPolicy {
    /// Name of the fallback MicroService in the same namespace, if any.
    pub fallback: Option<String>,
    /// Enforce or Observe.
    pub mode: Mode,
    /// Fewer healthy pods than this makes a service unhealthy (primary fails over; a fallback is
    /// not used).
    pub min_healthy: u32,
    /// 5xx ratio above which a pod counts as failing; `None` disables the error-rate check.
    pub max_error_rate: Option<f64>,
    /// Width of the sliding window the 5xx ratio is computed over.
    pub error_rate_window: Duration,
    /// The primary must stay healthy this long before traffic fails back to it.
    pub recover_after: Duration,
    /// Flips (failover or failback) allowed within `flap_window` before the target is held.
    pub max_flaps: u32,
    /// Window over which flips are counted.
    pub flap_window: Duration,
    /// Whether the prober scrapes the metrics endpoint of each pod.
    pub scrape_metrics: bool,
    /// Most of the primary's pods, in percent (rounded down, but at least one pod), that may be
    /// out of traffic at once; 100 means no cap.
    pub max_ejection_percent: u32,
    /// Panic (every kubelet-Ready pod serves) when fewer than this percentage of the primary's
    /// pods pass probing; 0 means only when none does.
    pub panic_threshold_percent: u32,
    /// Whether an ejected pod that still receives requests is only reported or also restarted.
    pub sticky: StickyAction,
    /// A person holds the traffic on the fallback (maintenance), whatever the primary's health.
    pub hold_on_fallback: bool,
}

/// What to do about an ejected pod that keeps receiving requests (from
/// `failover.stickyConnections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StickyAction {
    /// Status, Event and metric only.
    #[default]
    Report,
    /// Also delete the pod, rate-limited (see `sticky.rs`).
    Restart,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        Self {
            fallback: None,
            mode: Mode::Enforce,
            min_healthy: 1,
            max_error_rate: None,
            error_rate_window: Duration::from_secs(30),
            recover_after: Duration::from_secs(10),
            max_flaps: 3,
            flap_window: Duration::from_secs(300),
            scrape_metrics: false,
            max_ejection_percent: 100,
            panic_threshold_percent: 0,
            sticky: StickyAction::Report,
            hold_on_fallback: false,
        }
    }
}
