//! `status.traffic`: request figures of a MicroService's pods (requests per second, error ratio,
//! p99 latency) over a recent window, read from their metrics endpoint by the failover engine.
//!
//! Data and schema only. The doc comments are what `kubectl explain microservice.status.traffic`
//! prints, so they are written for a cluster admin; the figures are computed in the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Request figures of a MicroService's pods over the last `windowSeconds`, as Prometheus would
/// compute them from the pods' own metrics (`rate(...)`, `histogram_quantile(0.99, ...)`), shown
/// in the RPS, ERRORS and P99-MS columns. Written by the failover engine (field manager
/// `flotilla-failover`) for services that report traffic (`spec.health.reportTraffic`), and
/// refreshed at most every 30 seconds (every 2 seconds while a guarded rollout analyses a
/// canary), only when a figure moved by more than a tenth (the error ratio: by more than 0.01)
/// or the last refresh is 5 minutes old. Figures for which there is no data are absent, never 0;
/// the whole object is absent while no pod's metrics could be read.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficStatus {
    /// API requests per second answered by all pods over the window (requests to the health,
    /// readiness and metrics paths, and gRPC health checks, are not counted), to three
    /// significant digits. Read from `http_requests_total`, or `grpc_server_handled_total` for
    /// a gRPC service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub requests_per_second: Option<f64>,

    /// Share of those requests that failed, 0 to 1, to three decimals: HTTP 5xx answers, or for
    /// a gRPC service the codes Unknown, DeadlineExceeded, Internal, Unavailable and DataLoss.
    /// Absent when there were no requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub error_ratio: Option<f64>,

    /// 99th percentile of the requests' latency in milliseconds, to three significant digits,
    /// from the pods' duration histogram (`http_request_duration_seconds`, or
    /// `grpc_server_handling_seconds` for a gRPC service) by linear interpolation within its
    /// buckets, as Prometheus's `histogram_quantile` does: it is only as precise as the buckets.
    /// Absent without a histogram or with fewer than 100 requests in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub p99_latency_millis: Option<f64>,

    /// Pods whose metrics make up the figures. A pod failing Flotilla's readiness probes is not
    /// scraped, so its requests are missing here while it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub pods: Option<i32>,

    /// Length of the window the figures cover, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub window_seconds: Option<i32>,

    /// When the figures were computed (the window ends here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,

    /// While a guarded rollout runs canary pods: the figures of the canary pods alone. The
    /// analysis compares their p99 latency with the stable pods' (`spec.rollout.failOn`
    /// `Latency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<TrafficFigures>,

    /// While a guarded rollout runs canary pods: the figures of the stable pods alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<TrafficFigures>,
}

/// The request figures of one group of pods (the canary or the stable pods of a guarded
/// rollout), over the same window as the figures around them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficFigures {
    /// API requests per second answered by these pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub requests_per_second: Option<f64>,

    /// Share of their requests that failed, 0 to 1; absent when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub error_ratio: Option<f64>,

    /// 99th percentile of their requests' latency in milliseconds; absent with fewer than 100
    /// requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub p99_latency_millis: Option<f64>,

    /// Pods whose metrics make up these figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub pods: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The YAML names are the documented camelCase ones, and absent figures are left out
    /// rather than written as 0.
    #[test]
    fn names_are_camel_case_and_absent_figures_are_omitted() {
        let t = TrafficStatus {
            requests_per_second: Some(12.5),
            p99_latency_millis: Some(4.95),
            window_seconds: Some(30),
            canary: Some(TrafficFigures {
                pods: Some(1),
                ..TrafficFigures::default()
            }),
            ..TrafficStatus::default()
        };
        let v = serde_json::to_value(&t).unwrap_or_default();
        assert_eq!(v["requestsPerSecond"], 12.5);
        assert_eq!(v["p99LatencyMillis"], 4.95);
        assert_eq!(v["windowSeconds"], 30);
        assert!(v.get("errorRatio").is_none());
        assert!(v.get("stable").is_none());
        assert_eq!(v["canary"], serde_json::json!({"pods": 1}));
    }
}
