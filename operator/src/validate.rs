//! First stage of the pipeline: check a MicroService for what the schema cannot express and turn
//! it into a [`ValidatedSpec`], the only input the builders accept.
//!
//! The API server already enforces the schema and CEL rules, but `render` runs without a server,
//! so the checks that matter for building are repeated here. Pure: no client, no clock.

use std::collections::BTreeSet;
use std::fmt;

use flotilla_crds::{MicroService, MicroServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

/// One problem in a spec, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.autoscaling.minReplicas`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A MicroService that passed the schema (or was never checked by one) but cannot be realised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidSpec {
    /// Every problem found, in field order.
    pub errors: Vec<FieldError>,
}

/// A dependency the container is told about through `<NAME>_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// MicroService name.
    pub name: String,
    /// Environment variable name, e.g. `AUTH_URL`.
    pub env_name: String,
    /// `http://<name>.<ns>.svc.cluster.local:<port>`.
    pub url: String,
}

/// A MicroService ready to be built: identity, owner reference and spec, all checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedSpec {
    /// MicroService (and child object) name.
    pub name: String,
    /// Namespace of the MicroService and its children.
    pub namespace: String,
    /// Controller owner reference for children; `None` when the object has no uid (render).
    pub owner: Option<OwnerReference>,
    /// Value of the `app.kubernetes.io/part-of` label.
    pub part_of: String,
    /// Dependencies with their URLs.
    pub dependencies: Vec<Dependency>,
    /// The checked spec.
    pub spec: MicroServiceSpec,
}

/// Looks up the Service port of another MicroService in the same namespace; `None` when it does
/// not exist.
pub trait DependencyLookup {
    /// Service port of MicroService `name`, if it exists.
    fn service_port(&self, name: &str) -> Option<i32>;
}

impl<F: Fn(&str) -> Option<i32>> DependencyLookup for F {
    fn service_port(&self, name: &str) -> Option<i32> {
        self(name)
    }
}

/// Port assumed for a dependency that does not exist (yet): the default Service port.
pub const DEFAULT_DEPENDENCY_PORT: i32 = 80;

/// The outcome of validation: the spec, plus dependencies that do not exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The spec to build from.
    pub spec: ValidatedSpec,
    /// Names in `spec.dependencies` with no MicroService behind them (reported, not fatal).
    pub missing_dependencies: Vec<String>,
}

/// Checks `ms` and resolves its dependencies. `default_namespace` is used when the object has
/// none (render reads manifests without a namespace).
pub fn validate(
    ms: &MicroService,
    default_namespace: Option<&str>,
    lookup: &dyn DependencyLookup,
) -> Result<Validated, InvalidSpec> {
    let mut errs = Errors::default();
    let name = ms.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        errs.push("metadata.name", "is required");
    } else if !is_dns_label(&name) {
        errs.push(
            "metadata.name",
            "must be a DNS-1035 label (lowercase letters, digits, '-', starting with a letter, at most 63 characters)",
        );
    }
    let namespace = ms
        .metadata
        .namespace
        .clone()
        .or_else(|| default_namespace.map(str::to_string))
        .unwrap_or_default();
    if namespace.is_empty() {
        errs.push("metadata.namespace", "is required");
    }
    let spec = &ms.spec;
    check_spec(&name, spec, &mut errs);

    let part_of = spec.part_of.clone().unwrap_or_else(|| namespace.clone());
    if !is_label_value(&part_of) {
        errs.push("spec.partOf", "must be a valid label value (at most 63 characters, alphanumeric at both ends, '-', '_', '.' inside)");
    }
    if !errs.0.is_empty() {
        return Err(InvalidSpec { errors: errs.0 });
    }

    let mut dependencies = Vec::new();
    let mut missing = Vec::new();
    for dep in spec.dependencies.iter().flatten() {
        let port = lookup.service_port(dep).unwrap_or_else(|| {
            missing.push(dep.clone());
            DEFAULT_DEPENDENCY_PORT
        });
        dependencies.push(Dependency {
            name: dep.clone(),
            env_name: format!("{}_URL", dep.to_uppercase().replace('-', "_")),
            url: format!("http://{dep}.{namespace}.svc.cluster.local:{port}"),
        });
    }
    let owner = ms.controller_owner_ref(&());
    Ok(Validated {
        spec: ValidatedSpec {
            name,
            namespace,
            owner,
            part_of,
            dependencies,
            spec: spec.clone(),
        },
        missing_dependencies: missing,
    })
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

fn check_spec(name: &str, spec: &MicroServiceSpec, errs: &mut Errors) {
    if spec.image.trim().is_empty() {
        errs.push("spec.image", "is required");
    }
    if spec.replicas < 0 {
        errs.push("spec.replicas", "must be 0 or more");
    }
    check_port("spec.port", spec.port, errs);
    check_port("spec.service.port", spec.service.port, errs);
    let pn = &spec.port_name;
    if pn.is_empty()
        || pn.len() > 15
        || !pn
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || pn.starts_with('-')
        || pn.ends_with('-')
        || pn.contains("--")
        || !pn.chars().any(|c| c.is_ascii_lowercase())
    {
        errs.push("spec.portName", "must be an IANA service name (at most 15 lowercase letters, digits and '-', with a letter)");
    }
    check_config(spec, errs);
    if let Some(a) = &spec.autoscaling {
        if a.min_replicas < 1 {
            errs.push("spec.autoscaling.minReplicas", "must be at least 1");
        }
        if a.min_replicas > a.max_replicas {
            errs.push(
                "spec.autoscaling.minReplicas",
                "must be less than or equal to maxReplicas",
            );
        }
        if a.target_cpu_utilization_percentage.is_none()
            && a.target_memory_utilization_percentage.is_none()
        {
            errs.push(
                "spec.autoscaling",
                "needs targetCPUUtilizationPercentage and/or targetMemoryUtilizationPercentage",
            );
        }
        for (f, v) in [
            (
                "targetCPUUtilizationPercentage",
                a.target_cpu_utilization_percentage,
            ),
            (
                "targetMemoryUtilizationPercentage",
                a.target_memory_utilization_percentage,
            ),
        ] {
            if v.is_some_and(|v| v < 1) {
                errs.push(format!("spec.autoscaling.{f}"), "must be at least 1");
            }
        }
    }
    let h = &spec.health;
    for (f, p) in [
        ("livenessPath", &h.liveness_path),
        ("readinessPath", &h.readiness_path),
        ("metricsPath", &h.metrics_path),
    ] {
        if !p.starts_with('/') {
            errs.push(format!("spec.health.{f}"), "must start with '/'");
        }
    }
    for (f, v, min) in [
        ("periodMillis", h.period_millis, 1),
        ("timeoutMillis", h.timeout_millis, 1),
        ("failureThreshold", h.failure_threshold, 1),
        ("successThreshold", h.success_threshold, 1),
        ("initialDelaySeconds", h.initial_delay_seconds, 0),
    ] {
        if v < min {
            errs.push(
                format!("spec.health.{f}"),
                format!("must be at least {min}"),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (i, dep) in spec.dependencies.iter().flatten().enumerate() {
        let field = format!("spec.dependencies[{i}]");
        if !is_dns_label(dep) {
            errs.push(&field, "must be a MicroService name (DNS-1035 label)");
        }
        if dep == name {
            errs.push(&field, "must not name the MicroService itself");
        }
        if !seen.insert(dep) {
            errs.push(&field, format!("duplicate dependency {dep:?}"));
        }
    }
    let f = &spec.failover;
    match &f.fallback {
        None if f.enabled => errs.push(
            "spec.failover.fallback",
            "is required when failover is enabled",
        ),
        Some(fb) if fb == name => errs.push(
            "spec.failover.fallback",
            "must name another MicroService, not this one",
        ),
        Some(fb) if !is_dns_label(fb) => errs.push(
            "spec.failover.fallback",
            "must be a MicroService name (DNS-1035 label)",
        ),
        _ => {}
    }
    if f.max_error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        errs.push("spec.failover.maxErrorRate", "must be between 0 and 1");
    }
    if f.min_healthy < 1 {
        errs.push("spec.failover.minHealthy", "must be at least 1");
    }
    check_rollout(spec, errs);
    let mut env_names = BTreeSet::new();
    for (i, e) in spec.env.iter().flatten().enumerate() {
        if e.name.is_empty() {
            errs.push(format!("spec.env[{i}].name"), "is required");
        } else if !env_names.insert(&e.name) {
            errs.push(
                format!("spec.env[{i}].name"),
                format!("duplicate variable {:?}", e.name),
            );
        }
    }
    for key in spec.pod_annotations.iter().flat_map(|m| m.keys()) {
        if key.starts_with("flotilla.rs/") {
            errs.push(
                format!("spec.podAnnotations[{key}]"),
                "keys under flotilla.rs/ are reserved",
            );
        }
    }
}

/// The rollout and traffic-policy rules the schema states, again for `render`.
fn check_rollout(spec: &MicroServiceSpec, errs: &mut Errors) {
    let r = &spec.rollout;
    if r.canary_replicas.is_some() && r.canary_percent.is_some() {
        errs.push(
            "spec.rollout",
            "set rollout.canaryReplicas or rollout.canaryPercent, not both",
        );
    }
    if !(0.0..=1.0).contains(&r.max_error_rate) {
        errs.push("spec.rollout.maxErrorRate", "must be between 0 and 1");
    }
    if r.analysis_seconds < 1 {
        errs.push("spec.rollout.analysisSeconds", "must be at least 1");
    }
    let f = &spec.failover;
    for (field, pct) in [
        ("spec.failover.maxEjectionPercent", f.max_ejection_percent),
        (
            "spec.failover.panicThresholdPercent",
            f.panic_threshold_percent,
        ),
    ] {
        if !(0..=100).contains(&pct) {
            errs.push(field, "must be between 0 and 100");
        }
    }
}

fn check_port(field: &str, port: i32, errs: &mut Errors) {
    if !(1..=65535).contains(&port) {
        errs.push(field, "must be between 1 and 65535");
    }
}

/// ConfigMaps hold at most 1 MiB; stay clearly below it.
const MAX_CONFIG_BYTES: usize = 1_000_000;

fn check_config(spec: &MicroServiceSpec, errs: &mut Errors) {
    let mut total = 0;
    for (k, v) in spec.config.iter().flatten() {
        total += k.len() + v.len();
        if k.is_empty()
            || k.len() > 253
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || k == "."
            || k == ".."
        {
            errs.push(
                format!("spec.config[{k}]"),
                "keys must consist of letters, digits, '-', '_' or '.' (at most 253 characters)",
            );
        }
    }
    if total > MAX_CONFIG_BYTES {
        errs.push("spec.config", "is larger than 1 MB");
    }
    if let Some(p) = &spec.config_mount_path {
        if !p.starts_with('/') || p.len() < 2 {
            errs.push(
                "spec.configMountPath",
                "must be an absolute path other than /",
            );
        }
    }
}

/// DNS-1035 label: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !s.ends_with('-')
}

/// Kubernetes label value: empty, or at most 63 characters, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// Whether `key` can be used as an environment variable name (C identifier).
pub fn is_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
