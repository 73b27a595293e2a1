//! The desired state of a MicroService, as an admin writes it: the top level of the spec. Each
//! section with its own type lives in its own module (`autoscaling`, `health`, `service`,
//! `failover`, `rollout`), and the string patterns in `patterns`.
//!
//! The doc comments on these types become the CRD's OpenAPI descriptions, which is what
//! `kubectl explain microservice.spec...` prints; they are written for a cluster admin.
//! Validation that the API server can do (types, ranges, patterns, enums, CEL rules) is declared
//! here so that invalid objects are rejected at admission, before the operator sees them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::autoscaling::AutoscalingSpec;
use crate::failover::FailoverSpec;
use crate::health::HealthSpec;
use crate::patterns::{
    DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, IMAGE_PATTERN, LABEL_VALUE_PATTERN, PORT_NAME_PATTERN,
};
use crate::rollout::RolloutSpec;
use crate::service::ServiceSpec;
use crate::status::MicroServiceStatus;

/// Desired state of a MicroService: the container to run, how many replicas, its config, how it
/// is exposed, what it depends on and how its traffic fails over. Flotilla turns it into a
/// Deployment, a Service, and when asked a ConfigMap and a HorizontalPodAutoscaler.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "flotilla.rs",
    version = "v1alpha1",
    kind = "MicroService",
    plural = "microservices",
    shortname = "msvc",
    namespaced,
    status = "MicroServiceStatus",
    derive = "PartialEq",
    doc = "A MicroService runs one container image as a Deployment behind a Service, with optional config, autoscaling, dependency wiring and health-aware failover. The Flotilla operator creates and owns those objects and keeps them converged with the spec.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready replicas / desired replicas"
    ),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.failover.active",
        description = "Where the Service's traffic goes: primary or fallback"
    ),
    printcolumn(
        name = "Held",
        type_ = "boolean",
        json_path = ".status.failover.held",
        description = "True while traffic is held on the fallback for maintenance (spec.failover.holdOnFallback)"
    ),
    printcolumn(
        name = "Rollout",
        type_ = "string",
        json_path = ".status.rollout.phase",
        description = "Where the last pod template change stands: Stable, Analyzing, Promoted or RolledBack"
    ),
    printcolumn(
        name = "RPS",
        type_ = "number",
        json_path = ".status.traffic.requestsPerSecond",
        description = "API requests per second over the last window (status.traffic; spec.health.reportTraffic)"
    ),
    printcolumn(
        name = "Errors",
        type_ = "number",
        json_path = ".status.traffic.errorRatio",
        description = "Share of API requests that failed (HTTP 5xx, failing gRPC codes) over the last window"
    ),
    printcolumn(
        name = "P99-ms",
        type_ = "number",
        json_path = ".status.traffic.p99LatencyMillis",
        description = "99th percentile of API request latency in milliseconds over the last window"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        description = "Container image"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(format!("size(self.metadata.name) <= 63 && self.metadata.name.matches('{DNS_LABEL_PATTERN}')")).message("metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, at most 63 characters) because it names the Service"),
    validation = Rule::new("!has(self.spec.failover) || !has(self.spec.failover.fallback) || self.spec.failover.fallback != self.metadata.name").message("spec.failover.fallback must name another MicroService, not this one").field_path(".spec.failover.fallback"),
    validation = Rule::new("!has(self.spec.dependencies) || !(self.metadata.name in self.spec.dependencies)").message("spec.dependencies must not contain the MicroService itself").field_path(".spec.dependencies")
)]
#[serde(rename_all = "camelCase")]
pub struct MicroServiceSpec {
    /// Container image to run, e.g. `flotilla/users:0.1.0`.
    #[schemars(length(min = 1, max = 512), regex(pattern = IMAGE_PATTERN))]
    pub image: String,

    /// Number of pods. Ignored while `autoscaling` is set (the HorizontalPodAutoscaler owns the
    /// replica count then). `kubectl scale msvc NAME --replicas N` sets this field.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,

    /// TCP port the container listens on. It is declared on the pod under `portName` and the
    /// Service forwards its traffic to it.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Name of the container port (an IANA service name: lowercase letters, digits and '-', at
    /// most 15 characters, at least one letter). The Service targets the port by this name, and
    /// failover requires the primary and fallback to use the same name.
    #[serde(default = "default_port_name")]
    #[schemars(length(min = 1, max = 15), regex(pattern = PORT_NAME_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('[a-z]') && !self.contains('--')", "message": "portName must contain a letter and no '--'"}
    ]))]
    pub port_name: String,

    /// Entrypoint override (the image's ENTRYPOINT is used when unset). At most 32 items of at
    /// most 32768 characters each, so that one MicroService cannot grow the operator's cache of
    /// MicroServices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(max = 32768)))]
    pub command: Option<Vec<String>>,

    /// Arguments to the entrypoint (the image's CMD is used when unset). At most 256 items of at
    /// most 32768 characters each, so that one MicroService cannot grow the operator's cache of
    /// MicroServices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(max = 32768)))]
    pub args: Option<Vec<String>>,

    /// Environment variables for the container: literal values or `valueFrom` references to
    /// Secrets, ConfigMaps and pod fields. Flotilla adds `POD_IP`, `POD_NAME`, `POD_NAMESPACE`,
    /// one `<NAME>_URL` per dependency and the `config` keys; an entry here with the same name wins.
    /// At most 256 entries, each literal `value` at most 32768 characters, so that one
    /// MicroService cannot grow the operator's cache of MicroServices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), transform = bound_env_values)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Option<Vec<EnvVar>>,

    /// Configuration as key/value strings. Flotilla stores it in a ConfigMap named
    /// `<name>-config`, exposes every key whose name is a valid environment variable name as an
    /// environment variable, and rolls the pods when the data changes. Removing all keys deletes
    /// the ConfigMap. Keys must be valid ConfigMap keys (letters, digits, '-', '_', '.'). At most
    /// 256 keys, each value at most 1000000 characters, and all keys and values together
    /// at most 1 MB (1000000 bytes, below a ConfigMap's 1 MiB). The API server refuses a config
    /// over the first two bounds; the operator checks the total (and the keys) and reports a
    /// config over it as `Degraded` with reason `InvalidSpec`, applying nothing. The operator
    /// caches every MicroService and its ConfigMap, so these bounds cap what one MicroService
    /// costs it; cap the number of MicroServices per namespace with a ResourceQuota on
    /// `count/microservices.flotilla.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 256), transform = bound_config_values)]
    pub config: Option<BTreeMap<String, String>>,

    /// When set, the `config` keys are also mounted as files in this directory (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/"))]
    pub config_mount_path: Option<String>,

    /// CPU and memory requests and limits of the container. Utilisation-based autoscaling needs
    /// requests for the resource it scales on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Horizontal autoscaling. When set, Flotilla creates an autoscaling/v2
    /// HorizontalPodAutoscaler and stops managing the Deployment's replica count; removing it
    /// deletes the autoscaler and `replicas` applies again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// HTTP endpoints and timing used for the pod's liveness/readiness probes and by the failover
    /// engine's own fast probing.
    #[serde(default)]
    pub health: HealthSpec,

    /// How the MicroService is exposed inside (or outside) the cluster.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Names of other MicroServices in the same namespace that this one calls. For each, the
    /// container gets `<NAME>_URL=http://<name>.<namespace>.svc.cluster.local:<port>` (name upper-cased,
    /// '-' replaced by '_'). A dependency that does not exist is reported in status as
    /// `Degraded` with reason `DependencyMissing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub dependencies: Option<Vec<String>>,

    /// Health-aware traffic management: eject failing pods from the Service and fail over to a
    /// fallback MicroService when too few pods are healthy.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// How a new pod template (image, env, config, ...) reaches the pods: all at once through the
    /// Deployment (`RollingUpdate`), or canary pods first, judged by Flotilla's probes, then
    /// promoted or rolled back (`Guarded`).
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// Value of the `app.kubernetes.io/part-of` label on everything Flotilla creates for this
    /// MicroService. Defaults to the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_VALUE_PATTERN))]
    pub part_of: Option<String>,

    /// ServiceAccount the pods run as (the namespace's `default` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub service_account_name: Option<String>,

    /// Node labels a node must have for the pods to be scheduled on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Secrets used to pull the image from private registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,

    /// Extra annotations on the pods (for example for log shippers or service meshes). Keys
    /// starting with `flotilla.rs/` are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
}

/// Longest literal value of an `env` entry, in characters.
const MAX_ENV_VALUE_LENGTH: u64 = 32768;
/// Longest value of a `config` entry, in characters.
const MAX_CONFIG_VALUE_LENGTH: u64 = 1_000_000;

/// Bounds the literal `value` of every `env` entry (the item schema is Kubernetes' own
/// `EnvVar`, which sets no bound).
fn bound_env_values(schema: &mut schemars::Schema) {
    if let Some(value) = schema
        .pointer_mut("/items/properties/value")
        .and_then(serde_json::Value::as_object_mut)
    {
        value.insert("maxLength".into(), MAX_ENV_VALUE_LENGTH.into());
    }
}

/// Bounds every `config` value.
fn bound_config_values(schema: &mut schemars::Schema) {
    if let Some(value) = schema
        .pointer_mut("/additionalProperties")
        .and_then(serde_json::Value::as_object_mut)
    {
        value.insert("maxLength".into(), MAX_CONFIG_VALUE_LENGTH.into());
    }
}

fn default_replicas() -> i32 {
    1
}

fn default_port() -> i32 {
    8080
}

fn default_port_name() -> String {
    "http".to_string()
}

impl MicroServiceSpec {
    /// A spec with the given image and every other field at its default, as the API server
    /// would default an object that sets only `image`.
    pub fn with_image(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            replicas: default_replicas(),
            port: default_port(),
            port_name: default_port_name(),
            command: None,
            args: None,
            env: None,
            config: None,
            config_mount_path: None,
            resources: None,
            autoscaling: None,
            health: HealthSpec::default(),
            service: ServiceSpec::default(),
            dependencies: None,
            failover: FailoverSpec::default(),
            rollout: RolloutSpec::default(),
            part_of: None,
            service_account_name: None,
            node_selector: None,
            tolerations: None,
            image_pull_secrets: None,
            pod_annotations: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::FailoverMode;
    use crate::service::ServiceType;

    /// Deserialising a manifest that sets only `image` yields the documented defaults, the same
    /// values the API server fills in from the schema.
    #[test]
    fn minimal_manifest_gets_defaults() {
        let spec: MicroServiceSpec =
            serde_json::from_value(serde_json::json!({"image": "flotilla/users:0.1.0"}))
                .unwrap_or_else(|e| panic!("minimal spec must parse: {e}"));
        assert_eq!(spec, MicroServiceSpec::with_image("flotilla/users:0.1.0"));
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.port, 8080);
        assert_eq!(spec.port_name, "http");
        assert_eq!(spec.health.readiness_path, "/readyz");
        assert_eq!(spec.health.period_millis, 500);
        assert_eq!(spec.service.port, 80);
        assert_eq!(spec.service.type_, ServiceType::ClusterIP);
        assert!(!spec.failover.enabled);
        assert_eq!(spec.failover.mode, FailoverMode::Enforce);
        assert_eq!(spec.failover.recover_after_seconds, 10);
    }

    /// The YAML field names are the camelCase names of the shared contract.
    #[test]
    fn field_names_are_camel_case() {
        let mut spec = MicroServiceSpec::with_image("x");
        spec.autoscaling = Some(AutoscalingSpec {
            min_replicas: 1,
            max_replicas: 3,
            target_cpu_utilization_percentage: Some(70),
            target_memory_utilization_percentage: Some(80),
            scale_down_stabilization_seconds: Some(60),
        });
        spec.config_mount_path = Some("/etc/app".into());
        let v = serde_json::to_value(&spec).unwrap_or_default();
        assert!(v.get("portName").is_some());
        assert!(v.get("configMountPath").is_some());
        let a = &v["autoscaling"];
        assert_eq!(a["targetCPUUtilizationPercentage"], 70);
        assert_eq!(a["targetMemoryUtilizationPercentage"], 80);
        assert_eq!(a["scaleDownStabilizationSeconds"], 60);
        assert_eq!(v["service"]["type"], "ClusterIP");
        assert_eq!(v["health"]["initialDelaySeconds"], 0);
        assert_eq!(v["failover"]["scrapeMetrics"], false);
    }
}
