//! First stage of the pipeline: check a MicroService for what the schema cannot express and turn
//! it into a [`ValidatedSpec`], the only input the builders accept.
//!
//! The API server enforces the CRD's schema and CEL rules, but `render` runs without a server
//! and the controller must never build from a spec the server would refuse, so the same
//! verdict is reached here: the schema's constraints are read from the generated CRD, its CEL
//! rules are restated one by one, and the few checks the server cannot make are added. The
//! agreement tests run specs through the API server, `validate` and `render` and require one
//! verdict. Pure: no client, no clock.

use std::fmt;
use std::sync::LazyLock;

use flotilla_crds::{MicroService, MicroServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use regex::Regex;

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
        let mut errors = errs.0;
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        return Err(InvalidSpec { errors });
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

/// Every check of a spec: the CRD's OpenAPI constraints (read from the generated schema),
/// the CRD's CEL rules (restated here; the agreement tests run both on the same specs), and
/// the few checks the API server cannot make, which the operator reports in status.
fn check_spec(name: &str, spec: &MicroServiceSpec, errs: &mut Errors) {
    match serde_json::to_value(spec) {
        Ok(json) => errs.0.extend(schema::check_spec(&json, false)),
        Err(e) => errs.push("spec", format!("cannot be represented as JSON: {e}")),
    }
    check_rules(name, spec, errs);
    check_operator_only(spec, errs);
}

/// The CEL rules (`x-kubernetes-validations`) of the CRD, one branch per rule, reported at
/// the field the API server reports them at.
fn check_rules(name: &str, spec: &MicroServiceSpec, errs: &mut Errors) {
    let pn = &spec.port_name;
    if !pn.chars().any(|c| c.is_ascii_lowercase()) || pn.contains("--") {
        errs.push(
            "spec.portName",
            "portName must contain a letter and no '--'",
        );
    }
    if let Some(a) = &spec.autoscaling {
        if a.min_replicas > a.max_replicas {
            errs.push(
                "spec.autoscaling",
                format!(
                    "minReplicas ({}) must be less than or equal to maxReplicas ({})",
                    a.min_replicas, a.max_replicas
                ),
            );
        }
        if a.target_cpu_utilization_percentage.is_none()
            && a.target_memory_utilization_percentage.is_none()
        {
            errs.push(
                "spec.autoscaling",
                "set targetCPUUtilizationPercentage and/or targetMemoryUtilizationPercentage",
            );
        }
    }
    if spec.dependencies.iter().flatten().any(|d| d == name) {
        errs.push(
            "spec.dependencies",
            "spec.dependencies must not contain the MicroService itself",
        );
    }
    let f = &spec.failover;
    if f.enabled && f.fallback.is_none() {
        errs.push(
            "spec.failover",
            "failover.fallback is required when failover.enabled is true",
        );
    }
    if f.max_error_rate.is_some() && !f.scrape_metrics {
        errs.push(
            "spec.failover",
            "failover.maxErrorRate needs failover.scrapeMetrics: true",
        );
    }
    if f.fallback.as_deref() == Some(name) {
        errs.push(
            "spec.failover.fallback",
            "spec.failover.fallback must name another MicroService, not this one",
        );
    }
    // JSON has no NaN, so the schema cannot see one a typed caller sets; bounds cover the rest.
    if f.max_error_rate.is_some_and(f64::is_nan) {
        errs.push("spec.failover.maxErrorRate", "must be between 0 and 1");
    }
    let r = &spec.rollout;
    if r.canary_replicas.is_some() && r.canary_percent.is_some() {
        errs.push(
            "spec.rollout",
            "set rollout.canaryReplicas or rollout.canaryPercent, not both",
        );
    }
}

/// What the API server cannot check (CEL over map keys and sums would exceed its cost
/// budget) but would make the children unappliable: the operator reports these in status.
fn check_operator_only(spec: &MicroServiceSpec, errs: &mut Errors) {
    check_config(spec, errs);
    for (i, e) in spec.env.iter().flatten().enumerate() {
        if e.name.is_empty() {
            errs.push(format!("spec.env[{i}].name"), "is required");
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

/// ConfigMaps hold at most 1 MiB; stay clearly below it.
const MAX_CONFIG_BYTES: usize = 1_000_000;

static CONFIG_KEY: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(flotilla_crds::CONFIG_KEY_PATTERN).ok());
static DNS_LABEL: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(flotilla_crds::DNS_LABEL_PATTERN).ok());
static LABEL_VALUE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(flotilla_crds::LABEL_VALUE_PATTERN).ok());

fn is_match(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

fn check_config(spec: &MicroServiceSpec, errs: &mut Errors) {
    let mut total = 0usize;
    for (k, v) in spec.config.iter().flatten() {
        total = total.saturating_add(k.len()).saturating_add(v.len());
        if k.len() > 253 || !is_match(&CONFIG_KEY, k) || k == "." || k == ".." {
            errs.push(
                format!("spec.config[{k}]"),
                "keys must consist of letters, digits, '-', '_' or '.' (at most 253 characters)",
            );
        }
    }
    if total > MAX_CONFIG_BYTES {
        errs.push("spec.config", "is larger than 1 MB");
    }
}

/// DNS-1035 label ([`flotilla_crds::DNS_LABEL_PATTERN`]), at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_match(&DNS_LABEL, s)
}

/// Kubernetes label value: empty, or at most 63 characters matching
/// [`flotilla_crds::LABEL_VALUE_PATTERN`].
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || (s.len() <= 63 && is_match(&LABEL_VALUE, s))
}

/// Whether `key` can be used as an environment variable name (C identifier).
pub fn is_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[path = "validate_schema.rs"]
pub mod schema;

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
