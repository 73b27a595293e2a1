//! Guarded rollouts: `spec.rollout` (how a new pod template reaches the pods) and
//! `status.rollout` (where the last template change stands).
//!
//! Data and schema only. The doc comments are what `kubectl explain microservice.spec.rollout`
//! prints, so they are written for a cluster admin; the decisions live in the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a change of the pod template (image, command, env, config, resources, ...) reaches the
/// pods. `RollingUpdate` hands it to the Deployment at once. `Guarded` first runs the new template
/// on a few canary pods that take their share of the live traffic, judges them with Flotilla's own
/// probes for `analysisSeconds`, and then either promotes the template to every pod or rolls it
/// back, with no service mesh and no metrics server.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.canaryReplicas) && has(self.canaryPercent))", "message": "set rollout.canaryReplicas or rollout.canaryPercent, not both"}
]))]
pub struct RolloutSpec {
    /// `RollingUpdate` (the Deployment rolls every pod to the new template, Kubernetes' own
    /// behaviour) or `Guarded` (canary first, then promote or roll back).
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// Number of canary pods running the new template during an analysis (`Guarded` only). The
    /// canary pods are added next to the stable pods and take a share of the Service's traffic by
    /// pod count, `canary / (replicas + canary)`; the canary never has more pods than the stable
    /// side, so its share is at most one half. Defaults to 1 pod when neither this nor
    /// `canaryPercent` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub canary_replicas: Option<i32>,

    /// Canary pods as a percentage of `replicas`, rounded up to at least one pod (`Guarded` only).
    /// Mutually exclusive with `canaryReplicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub canary_percent: Option<i32>,

    /// How long, in seconds, every canary pod must stay healthy under traffic before the new
    /// template is promoted. The clock starts when all canary pods are ready.
    #[serde(default = "default_analysis_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub analysis_seconds: i32,

    /// How long, in seconds, the canary pods may take to become ready. A canary that is not ready
    /// by then (an image that cannot be pulled, a crash loop, a readiness check that never passes)
    /// fails the analysis. Image pull errors and crash loops fail it at once.
    #[serde(default = "default_ready_timeout_seconds")]
    #[schemars(range(min = 5, max = 3600))]
    pub ready_timeout_seconds: i32,

    /// Largest tolerated excess of the canary's HTTP 5xx ratio over the stable pods' ratio (0 to
    /// 1): with 0.05 the analysis fails when the canary's ratio exceeds the stable pods' by more
    /// than five points. Read from each pod's metrics endpoint (`health.metricsPath`) during the
    /// analysis.
    #[serde(default = "default_max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,

    /// Largest tolerated ratio of the canary pods' p99 latency to the stable pods' (1 to 100):
    /// with 2 the analysis fails when the canary's p99 is more than twice the stable pods' and
    /// more than `latencyToleranceMillis` above it (`failOn` `Latency`). Both come from
    /// `status.traffic` (the pods' duration histograms over the last 30 seconds); while either
    /// has no figure (no histogram, fewer than 100 requests) latency fails nothing.
    #[serde(default = "default_max_latency_ratio")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub max_latency_ratio: f64,

    /// A canary p99 latency at most this many milliseconds above the stable pods' never fails
    /// the analysis, whatever `maxLatencyRatio` says: a histogram resolves latency only to its
    /// bucket bounds, and a service answering in 2 ms that now takes 5 is rarely a regression.
    #[serde(default = "default_latency_tolerance_millis")]
    #[schemars(range(min = 0, max = 60000))]
    pub latency_tolerance_millis: i32,

    /// Which evidence fails the analysis besides readiness: `ProbeFailure` (Flotilla's probes
    /// judge a canary pod unhealthy, or a ready canary pod turns unready), `ErrorRate` (see
    /// `maxErrorRate`), `Restart` (a canary container restarts), `Latency` (see
    /// `maxLatencyRatio`). A canary that never becomes ready always fails.
    #[serde(default = "default_fail_on")]
    #[schemars(length(max = 4))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub fail_on: Vec<FailOn>,

    /// On a failed analysis, delete the canary pods and keep every pod on the last good template
    /// (`true`), or only take the canary pods out of traffic and keep them for inspection
    /// (`false`). Either way the Service's traffic goes to the last good template only.
    #[serde(default = "default_auto_rollback")]
    pub auto_rollback: bool,

    /// Hold every analysis before promotion (`Guarded` only). A new template still starts its
    /// canary and a failing canary is still rolled back, but a canary that passes its analysis
    /// waits until `paused` is false again, or until a promotion is requested with the
    /// `flotilla.rs/rollout-promote` annotation.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,

    /// How many entries of the revision history to keep (ControllerRevisions named
    /// `<name>-<revision>`, oldest removed first): every template that became stable or was
    /// rolled back, so a person can go back to a previous good one without a new analysis.
    #[serde(default = "default_revision_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub revision_history_limit: i32,
}

fn default_revision_history_limit() -> i32 {
    10
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            strategy: RolloutStrategy::default(),
            canary_replicas: None,
            canary_percent: None,
            analysis_seconds: default_analysis_seconds(),
            ready_timeout_seconds: default_ready_timeout_seconds(),
            max_error_rate: default_max_error_rate(),
            max_latency_ratio: default_max_latency_ratio(),
            latency_tolerance_millis: default_latency_tolerance_millis(),
            fail_on: default_fail_on(),
            auto_rollback: default_auto_rollback(),
            paused: false,
            revision_history_limit: default_revision_history_limit(),
        }
    }
}

/// How a new pod template reaches the pods.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutStrategy {
    /// The Deployment's own rolling update: every pod moves to the new template, no analysis.
    #[default]
    RollingUpdate,
    /// Canary pods run the new template first; Flotilla promotes or rolls back on evidence.
    Guarded,
}

/// Evidence that fails a guarded rollout's analysis.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum FailOn {
    /// Flotilla's probes judge a canary pod unhealthy, or a ready canary pod turns unready.
    ProbeFailure,
    /// The canary's HTTP 5xx ratio exceeds the stable pods' by more than `maxErrorRate`.
    ErrorRate,
    /// A canary container restarts.
    Restart,
    /// The canary pods' p99 latency exceeds the stable pods' by more than `maxLatencyRatio`
    /// (and `latencyToleranceMillis`).
    Latency,
}

fn default_analysis_seconds() -> i32 {
    30
}
fn default_ready_timeout_seconds() -> i32 {
    120
}
fn default_max_error_rate() -> f64 {
    0.05
}
fn default_max_latency_ratio() -> f64 {
    2.0
}
fn default_latency_tolerance_millis() -> i32 {
    20
}
fn default_fail_on() -> Vec<FailOn> {
    vec![
        FailOn::ProbeFailure,
        FailOn::ErrorRate,
        FailOn::Restart,
        FailOn::Latency,
    ]
}
fn default_auto_rollback() -> bool {
    true
}

/// Where the pod template's rollout stands, as shown in the ROLLOUT column.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// Every pod runs the current template; no analysis is under way.
    #[default]
    Stable,
    /// Canary pods run a new template and are being judged.
    Analyzing,
    /// The last new template passed its analysis and now runs on every pod.
    Promoted,
    /// The last new template failed its analysis; the pods stay on the last good template (see
    /// `failedRevision`, `reason` and `evidence`). Re-applying the same template does not retry
    /// it; a different template does, and so does the `flotilla.rs/rollout-retry` annotation.
    RolledBack,
    /// The strategy is not acted on by this operator version; the Deployment rolls as with
    /// `RollingUpdate`.
    Unsupported,
}

impl RolloutPhase {
    /// The status string, as in the ROLLOUT column.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Stable => "Stable",
            RolloutPhase::Analyzing => "Analyzing",
            RolloutPhase::Promoted => "Promoted",
            RolloutPhase::RolledBack => "RolledBack",
            RolloutPhase::Unsupported => "Unsupported",
        }
    }
}

/// State of the pod template's rollout. It is the rollout's memory: an operator that restarts
/// mid-analysis resumes from it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `Stable`, `Analyzing`, `Promoted`, `RolledBack` or `Unsupported`.
    #[serde(default)]
    pub phase: RolloutPhase,

    /// Revision (a hash of the pod template) that the stable pods run: the last good template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,

    /// Revision under analysis on the canary pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,

    /// When the analysis of `canaryRevision` started (canary pods created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_start_time: Option<Time>,

    /// When every canary pod was first ready; `analysisSeconds` count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_ready_time: Option<Time>,

    /// The last revision that failed its analysis. It is not tried again until the template
    /// changes or the `flotilla.rs/rollout-retry` annotation changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,

    /// Why the last analysis ended, e.g. `Promoted`, `CanaryNotReady`, `CanaryProbeFailed`,
    /// `CanaryErrorRate`, `CanaryLatency`, `CanaryRestarted`, `FailedOver`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// A human-readable account of the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// When the last analysis ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,

    /// The value of the `flotilla.rs/rollout-retry` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_token: Option<String>,

    /// The value of the `flotilla.rs/rollout-promote` annotation last seen. A new value promotes
    /// the revision under analysis at once; with no analysis under way it is acknowledged here
    /// and changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_token: Option<String>,

    /// The value of the `flotilla.rs/rollout-abort` annotation last seen. A new value rolls the
    /// revision under analysis back at once (reason `Aborted`); with no analysis under way it is
    /// acknowledged here and changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_token: Option<String>,

    /// What the canary pods showed when the analysis failed (at most 10 entries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub evidence: Vec<RolloutEvidence>,
}

/// One observation about one canary pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutEvidence {
    /// Canary pod name; empty when the observation is about the canary pods together (their
    /// latency) or the whole service (a failover, a request).
    pub pod: String,
    /// What was seen, e.g. `ImagePullBackOff`, `not ready after 120s`, `probe: http 503 (3 in a
    /// row)`, `5xx ratio 0.50 vs stable 0.00`, `p99 latency 248 ms vs stable 4.95 ms`,
    /// `2 restarts`.
    pub observation: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty `rollout` section means today's behaviour: the Deployment's rolling update, with
    /// safe Guarded settings ready should the strategy be switched.
    #[test]
    fn empty_section_defaults_to_rolling_update() {
        let r: RolloutSpec = serde_json::from_value(serde_json::json!({}))
            .unwrap_or_else(|e| panic!("empty rollout must parse: {e}"));
        assert_eq!(r, RolloutSpec::default());
        assert_eq!(r.strategy, RolloutStrategy::RollingUpdate);
        assert_eq!(r.canary_replicas, None);
        assert_eq!(r.analysis_seconds, 30);
        assert!(r.auto_rollback);
        assert_eq!(
            r.fail_on,
            vec![
                FailOn::ProbeFailure,
                FailOn::ErrorRate,
                FailOn::Restart,
                FailOn::Latency
            ]
        );
        assert_eq!((r.max_latency_ratio, r.latency_tolerance_millis), (2.0, 20));
    }

    /// The YAML names are the documented camelCase ones.
    #[test]
    fn field_names_are_camel_case() {
        let r = RolloutSpec {
            strategy: RolloutStrategy::Guarded,
            canary_percent: Some(10),
            ..RolloutSpec::default()
        };
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["strategy"], "Guarded");
        assert_eq!(v["canaryPercent"], 10);
        assert_eq!(v["analysisSeconds"], 30);
        assert_eq!(v["readyTimeoutSeconds"], 120);
        assert_eq!(v["autoRollback"], true);
        let st = RolloutStatus {
            phase: RolloutPhase::RolledBack,
            failed_revision: Some("abc".into()),
            ..RolloutStatus::default()
        };
        let v = serde_json::to_value(&st).unwrap_or_default();
        assert_eq!(v["phase"], "RolledBack");
        assert_eq!(v["failedRevision"], "abc");
        assert!(v.get("evidence").is_none());
    }
}
