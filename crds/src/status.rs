//! The observed state of a MicroService.
//!
//! Two writers share the status, each with its own server-side-apply field manager:
//! the reconciler (`flotilla`) owns everything except `failover` and `traffic`, and the failover
//! engine (`flotilla-failover`) owns those two and the `FailedOver`/`Flapping` conditions. Every field is
//! optional and skipped when unset, so an apply by one writer never claims the other's fields,
//! and `conditions` is a map-list keyed by `type` so each writer owns its own entries.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rollout::RolloutStatus;
use crate::traffic_status::TrafficStatus;

/// Observed state of a MicroService, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MicroServiceStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current conditions: `Ready`, `Progressing`, `Degraded` (reconciler) and `FailedOver`,
    /// `Flapping` (failover engine).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Number of pods of the Deployment (all revisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Number of pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Number of pods running the current spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,

    /// `ready/desired`, shown in the READY column of `kubectl get msvc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,

    /// Label selector of the pods, as a string (used by the scale subresource and autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Health-aware traffic state, written by the failover engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverStatus>,

    /// Where the last pod template change stands (`spec.rollout`), written by the reconciler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,

    /// Request figures over a recent window (requests per second, error ratio, p99 latency),
    /// written by the failover engine for services that report traffic
    /// (`spec.health.reportTraffic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficStatus>,
}

/// Where the Service's traffic currently goes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ActiveTarget {
    /// The MicroService's own healthy pods.
    #[default]
    Primary,
    /// The healthy pods of `spec.failover.fallback`.
    Fallback,
}

impl ActiveTarget {
    /// The status string (`primary` or `fallback`).
    pub fn as_str(self) -> &'static str {
        match self {
            ActiveTarget::Primary => "primary",
            ActiveTarget::Fallback => "fallback",
        }
    }
}

/// Health-aware traffic state of a MicroService.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    /// Where the Service's traffic goes: `primary` or `fallback`. Absent while failover is off
    /// and the pods are probed only for a guarded rollout's analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveTarget>,

    /// Name of the fallback MicroService receiving the traffic while `active` is `fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,

    /// True while the traffic is held on the fallback because `spec.failover.holdOnFallback`
    /// asks for it (maintenance); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<bool>,

    /// Pods that pass Flotilla's probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_pods: Option<i32>,

    /// Pods that Flotilla probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_pods: Option<i32>,

    /// True when probing marks every pod unhealthy while Kubernetes considers them ready and no
    /// healthy fallback exists: the Kubernetes-ready pods are kept serving rather than dropping
    /// all traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic: Option<bool>,

    /// True when `spec.failover.mode` is `Observe`, or failover is off and the pods are probed
    /// only for a guarded rollout's analysis: decisions are reported but not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe_only: Option<bool>,

    /// Traffic flips counted in the current flap window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flaps: Option<i32>,

    /// When traffic last moved to the fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_time: Option<Time>,

    /// Why traffic last moved to the fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_reason: Option<String>,

    /// When traffic last returned to the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failback_time: Option<Time>,

    /// When Flotilla last restarted (evicted) one of this service's pods because its clients
    /// kept their connections (`stickyConnections: Restart`). It is written before the eviction,
    /// and the 30 s between two restarts of one service count from it, across operator restarts
    /// and leader changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sticky_restart_time: Option<Time>,

    /// Per-pod verdicts with their evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub pods: Vec<PodHealth>,
}

/// The failover engine's verdict on one pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodHealth {
    /// Pod name.
    pub name: String,

    /// Whether the pod currently counts as healthy (and, in Enforce mode, receives traffic).
    pub healthy: bool,

    /// Result of the last probe, e.g. `ok`, `timeout`, `http 503`, `connect error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<String>,

    /// When the last probe finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,

    /// Failed probes in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<i32>,

    /// Ratio of HTTP 5xx responses over the error-rate window (only with `scrapeMetrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio: Option<f64>,

    /// True when the pod is out of traffic but its request counter keeps rising: clients still
    /// reach it over connections opened before it was ejected (see
    /// `spec.failover.stickyConnections`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_connections: Option<bool>,

    /// API requests the pod answered since it was ejected (after a short grace period for
    /// connections to close), when its metrics are scraped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_while_ejected: Option<i64>,
}

/// A condition of `type_` (API conventions: `observedGeneration`, a transition time), keeping the transition time of the same condition in `previous`
/// while its status does not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status {
        crate::conditions::TRUE
    } else {
        crate::conditions::FALSE
    }
    .to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}
