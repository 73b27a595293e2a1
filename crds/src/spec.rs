//! The desired state of a MicroService, as an admin writes it.
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

use crate::rollout::RolloutSpec;
use crate::status::MicroServiceStatus;

/// Pattern of a DNS-1035 label (Service names, dependency names).
pub const DNS_LABEL_PATTERN: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// Pattern of a DNS-1123 subdomain (ServiceAccount names).
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Pattern of an IANA service name (container port names); a letter is also required.
pub const PORT_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Pattern of a non-empty Kubernetes label value.
pub const LABEL_VALUE_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
/// Pattern of a container image reference: no whitespace anywhere.
pub const IMAGE_PATTERN: &str = r"^\S+$";
/// Pattern of a ConfigMap key (the `config` keys; checked by the operator, since CEL over
/// map keys would exceed the API server's cost budget).
pub const CONFIG_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

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
        name = "Rollout",
        type_ = "string",
        json_path = ".status.rollout.phase",
        description = "Where the last pod template change stands: Stable, Analyzing, Promoted or RolledBack"
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
    /// `failover.scrapeMetrics` is on).
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

    /// Consecutive failed probes after which a pod counts as unhealthy.
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
        }
    }
}

/// How the Service exposes the MicroService.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: `ClusterIP` (inside the cluster only), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Port the Service listens on; traffic is forwarded to the container port.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
        }
    }
}

/// Kubernetes Service type.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Service `spec.type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
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
    {"rule": "!has(self.maxErrorRate) || self.scrapeMetrics", "message": "failover.maxErrorRate needs failover.scrapeMetrics: true"}
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
    /// (0 to 1) counts as failing. Needs `scrapeMetrics`. No traffic is never a failure.
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

fn default_replicas() -> i32 {
    1
}
fn default_port() -> i32 {
    8080
}
fn default_port_name() -> String {
    "http".to_string()
}
fn default_min_replicas() -> i32 {
    1
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
fn default_service_port() -> i32 {
    80
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
