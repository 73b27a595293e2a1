//! `spec.failover`: health-aware traffic, which pods serve and where traffic goes when too few
//! are healthy.
//!
//! Data and schema only. The doc comments are what `kubectl explain microservice.spec.failover`
//! prints, so they are written for a cluster admin; the decisions live in the operator.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::patterns::DNS_LABEL_PATTERN;

/// The schema of `failover.fallback`: a DNS-1035 label, and (unlike other optional fields) not
/// nullable.
fn fallback_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 63,
        "pattern": DNS_LABEL_PATTERN,
    })
}

/// Health-aware traffic settings used by the failover engine.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.enabled || has(self.fallback)", "message": "failover.fallback is required when failover.enabled is true"},
    {"rule": "!has(self.maxErrorRate) || self.scrapeMetrics", "message": "failover.maxErrorRate needs failover.scrapeMetrics: true"},
    {"rule": "!self.holdOnFallback || self.enabled", "message": "failover.holdOnFallback needs failover.enabled: true and a fallback"}
]))]
pub struct FailoverSpec {
    /// Turn health-aware traffic on. The Service then selects pods by the label
    /// `serves.flotilla.rs/<name>: "true"`, which Flotilla flips off for failing pods.
    #[serde(default)]
    pub enabled: bool,

    /// Name of another MicroService in the same namespace that takes this one's traffic when
    /// fewer than `minHealthy` pods are healthy. It must use the same `portName`.
    // Not nullable: the API server prunes a null it may not keep, so `fallback: null` counts as
    // absent and the rule that an enabled failover names a fallback refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "fallback_schema")]
    pub fallback: Option<String>,

    /// `Enforce` changes traffic; `Observe` only reports what it would do (status, Events,
    /// metrics), to tune thresholds safely.
    #[serde(default)]
    pub mode: FailoverMode,

    /// Fail over when fewer than this many pods are healthy.
    #[serde(default = "default_min_healthy")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_healthy: i32,

    /// A pod whose ratio of HTTP 5xx responses over `errorRateWindowSeconds` exceeds this value
    /// (0 to 1) counts as failing. Needs `scrapeMetrics`. No traffic is never a failure. A pod
    /// whose readiness watch lines carry its request counts (the Flotilla kit's do) is also
    /// judged at each heartbeat: it fails when each of its last `failureThreshold` spans of at
    /// least 10 API requests, the oldest ended within `errorRateWindowSeconds`, is above this
    /// value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: Option<f64>,

    /// Length of the sliding window for the error rate, in seconds.
    #[serde(default = "default_error_rate_window_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub error_rate_window_seconds: i32,

    /// After a failover, the primary must be healthy this long (seconds) before traffic returns.
    #[serde(default = "default_recover_after_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub recover_after_seconds: i32,

    /// After this many traffic flips within `flapWindowSeconds`, Flotilla holds the current target
    /// and sets the `Flapping` condition instead of flipping again.
    #[serde(default = "default_max_flaps")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_flaps: i32,

    /// Window in seconds over which flips are counted.
    #[serde(default = "default_flap_window_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub flap_window_seconds: i32,

    /// Scrape each pod's metrics endpoint (`health.metricsPath`) for `http_requests_total` to
    /// compute the error rate.
    #[serde(default)]
    pub scrape_metrics: bool,

    /// Never take more than this percentage of the pods out of traffic at once (rounded down, but
    /// one pod may always be ejected). Failing pods beyond the cap keep serving; a failover to
    /// the fallback is still decided on the real number of healthy pods. 100 (the default) means
    /// no cap; Envoy's outlier detection uses 10.
    #[serde(default = "default_max_ejection_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: i32,

    /// When fewer than this percentage of the pods pass Flotilla's probes and no healthy fallback
    /// exists, Flotilla stops ejecting and every pod Kubernetes considers ready serves (a "panic",
    /// as in Envoy, whose default is 50). 0 (the default) panics only when no pod passes.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub panic_threshold_percent: i32,

    /// What to do about an ejected pod that keeps receiving requests over connections clients
    /// opened before it was ejected (pooled keep-alive, HTTP/2 and gRPC clients stay on their
    /// connection). Flotilla scrapes the metrics endpoint of ejected pods when `scrapeMetrics`
    /// is on or this is `Restart`, and counts API requests (probe and metrics paths excluded).
    /// `Report` (the default) shows such a pod in `status.failover.pods` (`stickyConnections`,
    /// `requestsWhileEjected`), with a `StickyConnections` Event and a metric. `Restart` also
    /// deletes it so its connections break and its Deployment replaces it: at most one pod per
    /// MicroService every 30 seconds, only while the traffic's target has `minHealthy` healthy
    /// pods, never in panic and never in `Observe` mode.
    #[serde(default)]
    pub sticky_connections: StickyConnections,

    /// Hold the traffic on the fallback (maintenance) until this is false again, whatever the
    /// primary's health; `kubectl flotilla failover` sets it and `failback` clears it. Traffic
    /// moves as soon as the fallback has `minHealthy` healthy pods (it stays on the primary,
    /// with the reason in status, while the fallback has too few), and the move counts neither
    /// toward `maxFlaps` nor is it held by flapping. When the hold is cleared, traffic returns
    /// once the primary has been healthy for `recoverAfterSeconds`. `status.failover.held`
    /// and the HELD column show a hold in force.
    #[serde(default)]
    pub hold_on_fallback: bool,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            fallback: None,
            mode: FailoverMode::default(),
            min_healthy: default_min_healthy(),
            max_error_rate: None,
            error_rate_window_seconds: default_error_rate_window_seconds(),
            recover_after_seconds: default_recover_after_seconds(),
            max_flaps: default_max_flaps(),
            flap_window_seconds: default_flap_window_seconds(),
            scrape_metrics: false,
            max_ejection_percent: default_max_ejection_percent(),
            panic_threshold_percent: 0,
            sticky_connections: StickyConnections::default(),
            hold_on_fallback: false,
        }
    }
}

/// What the failover engine does about an ejected pod that still receives requests.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StickyConnections {
    /// Report the pod (status, Event, metric) and leave it running.
    #[default]
    Report,
    /// Report it and delete it, rate-limited, so its clients reconnect to serving pods.
    Restart,
}

/// Whether the failover engine acts on its decisions.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailoverMode {
    /// Change traffic (eject pods, fail over, fail back).
    #[default]
    Enforce,
    /// Decide and report only; traffic is never changed.
    Observe,
}

fn default_min_healthy() -> i32 {
    1
}

fn default_error_rate_window_seconds() -> i32 {
    30
}

fn default_recover_after_seconds() -> i32 {
    10
}

fn default_max_flaps() -> i32 {
    3
}

fn default_flap_window_seconds() -> i32 {
    300
}

fn default_max_ejection_percent() -> i32 {
    100
}
