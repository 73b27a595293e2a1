//! `spec.health`: the endpoints the kubelet and the failover engine probe, and how often.
//!
//! Data and schema only. The doc comments are what `kubectl explain microservice.spec.health`
//! prints, so they are written for a cluster admin.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Health endpoints and probe timing.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// HTTP path of the liveness endpoint; the kubelet restarts the container when it fails.
    #[serde(default = "default_liveness_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub liveness_path: String,

    /// HTTP path of the readiness endpoint; it decides whether a pod receives traffic.
    #[serde(default = "default_readiness_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub readiness_path: String,

    /// HTTP path of the Prometheus metrics endpoint (scraped by the failover engine when
    /// `failover.scrapeMetrics` is on, during a guarded rollout's analysis, and for the request
    /// figures of `reportTraffic`).
    #[serde(default = "default_metrics_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub metrics_path: String,

    /// Probe period in milliseconds. The failover engine probes at this period; the kubelet
    /// probes use it rounded up to whole seconds.
    #[serde(default = "default_period_millis")]
    #[schemars(range(min = 100, max = 300000))]
    pub period_millis: i32,

    /// Probe timeout in milliseconds (kubelet probes: rounded up to whole seconds).
    #[serde(default = "default_timeout_millis")]
    #[schemars(range(min = 50, max = 60000))]
    pub timeout_millis: i32,

    /// Consecutive failed probes after which a pod counts as unhealthy. A pod that reports
    /// its own readiness on Flotilla's readiness watch is believed at once: its "not ready" takes
    /// it out of the traffic without more probes.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,

    /// Consecutive successful probes after which an unhealthy pod counts as healthy again
    /// (the kubelet's readiness probe uses it; its liveness probe always uses 1).
    #[serde(default = "default_success_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: i32,

    /// Seconds after container start before the first probe.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: i32,

    /// Set when the service speaks gRPC. The kubelet then probes it with native `grpc` probes
    /// (`grpc.health.v1.Health/Check`) instead of GETs of the liveness and readiness paths, the
    /// Service port gets `appProtocol: grpc`, Flotilla's prober calls the same health method,
    /// and the error-rate check counts failing gRPC status codes (Unavailable, Internal,
    /// Unknown, DeadlineExceeded, ...) instead of HTTP 5xx. `metricsPath` is still scraped over
    /// HTTP on the same port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthSpec>,

    /// Report request figures (requests per second, error ratio, p99 latency) in
    /// `status.traffic` and the RPS, ERRORS and P99-MS columns of `kubectl get msvc`, read from
    /// `metricsPath`. Unset, they are reported where Flotilla reads the pods' metrics anyway:
    /// with `failover.enabled` and `failover.scrapeMetrics`, or with `rollout.strategy: Guarded`
    /// (whose analysis compares the canary's latency with the stable pods'). `true` reports
    /// them for any MicroService; pods that Flotilla does not probe are then only scraped, every
    /// 5 seconds. `false` turns them off (a guarded rollout's analysis then has no latency to
    /// compare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_traffic: Option<bool>,
}

/// How a gRPC service is health-checked.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcHealthSpec {
    /// The service name sent in each health check (`HealthCheckRequest.service`); empty asks
    /// about the server as a whole.
    #[serde(default)]
    #[schemars(length(max = 253))]
    pub service: String,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            liveness_path: default_liveness_path(),
            readiness_path: default_readiness_path(),
            metrics_path: default_metrics_path(),
            period_millis: default_period_millis(),
            timeout_millis: default_timeout_millis(),
            failure_threshold: default_failure_threshold(),
            success_threshold: default_success_threshold(),
            initial_delay_seconds: 0,
            grpc: None,
            report_traffic: None,
        }
    }
}

fn default_liveness_path() -> String {
    "/healthz".to_string()
}

fn default_readiness_path() -> String {
    "/readyz".to_string()
}

fn default_metrics_path() -> String {
    "/metrics".to_string()
}

fn default_period_millis() -> i32 {
    500
}

fn default_timeout_millis() -> i32 {
    300
}

fn default_failure_threshold() -> i32 {
    2
}

fn default_success_threshold() -> i32 {
    2
}
