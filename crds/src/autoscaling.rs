//! `spec.autoscaling`: the bounds and targets of the HorizontalPodAutoscaler Flotilla creates.
//!
//! Data and schema only. The doc comments are what `kubectl explain
//! microservice.spec.autoscaling` prints, so they are written for a cluster admin.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Autoscaling bounds and targets, realised as an autoscaling/v2 HorizontalPodAutoscaler.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas", "message": "minReplicas must be less than or equal to maxReplicas", "messageExpression": "'minReplicas (' + string(self.minReplicas) + ') must be less than or equal to maxReplicas (' + string(self.maxReplicas) + ')'"},
    {"rule": "has(self.targetCPUUtilizationPercentage) || has(self.targetMemoryUtilizationPercentage)", "message": "set targetCPUUtilizationPercentage and/or targetMemoryUtilizationPercentage"}
]))]
pub struct AutoscalingSpec {
    /// Lower bound of the replica count.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_replicas: i32,

    /// Upper bound of the replica count.
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,

    /// Target average CPU utilisation across pods, in percent of the CPU request.
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: Option<i32>,

    /// Target average memory utilisation across pods, in percent of the memory request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_memory_utilization_percentage: Option<i32>,

    /// How long the autoscaler waits, in seconds, before acting on a lower recommendation
    /// (the Kubernetes default of 300 applies when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: Option<i32>,
}

fn default_min_replicas() -> i32 {
    1
}
