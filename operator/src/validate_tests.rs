//! Unit tests of spec validation.

use flotilla_crds::{AutoscalingSpec, MicroService, MicroServiceSpec};
use k8s_openapi::api::core::v1::EnvVar;

use super::*;

fn ms(name: &str, spec: MicroServiceSpec) -> MicroService {
    let mut ms = MicroService::new(name, spec);
    ms.metadata.namespace = Some("shop".into());
    ms
}

fn none(_: &str) -> Option<i32> {
    None
}

fn fields(r: Result<Validated, InvalidSpec>) -> Vec<String> {
    match r {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.into_iter().map(|f| f.field).collect(),
    }
}

/// A minimal spec is valid and its dependencies resolve through the lookup.
#[test]
fn minimal_spec_is_valid() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.dependencies = Some(vec!["users".into(), "billing".into()]);
    let lookup = |n: &str| (n == "users").then_some(8080);
    let v = validate(&ms("auth", spec), None, &lookup).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.missing_dependencies, vec!["billing".to_string()]);
    assert_eq!(
        v.spec.dependencies[0].url,
        "http://users.shop.svc.cluster.local:8080"
    );
    assert_eq!(v.spec.dependencies[0].env_name, "USERS_URL");
    assert_eq!(
        v.spec.dependencies[1].url,
        "http://billing.shop.svc.cluster.local:80"
    );
    assert_eq!(v.spec.part_of, "shop");
    // No uid, no owner reference (render).
    assert!(v.spec.owner.is_none());
}

/// The namespace comes from the object, else from the default, else it is an error.
#[test]
fn namespace_is_required() {
    let mut m = ms("auth", MicroServiceSpec::with_image("x"));
    m.metadata.namespace = None;
    assert_eq!(
        fields(validate(&m, None, &none)),
        vec!["metadata.namespace"]
    );
    let v = validate(&m, Some("dev"), &none).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.spec.namespace, "dev");
}

/// Cross-field rules the CEL rules also state are enforced without a server.
#[test]
fn cross_field_rules() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.autoscaling = Some(AutoscalingSpec {
        min_replicas: 5,
        max_replicas: 2,
        target_cpu_utilization_percentage: None,
        target_memory_utilization_percentage: None,
        scale_down_stabilization_seconds: None,
    });
    spec.failover.enabled = true;
    spec.dependencies = Some(vec!["auth".into(), "users".into(), "users".into()]);
    let got = fields(validate(&ms("auth", spec), None, &none));
    assert_eq!(
        got,
        vec![
            "spec.autoscaling",
            "spec.autoscaling",
            "spec.dependencies",
            "spec.dependencies[2]",
            "spec.failover",
        ]
    );
}

/// A fallback naming the MicroService itself is rejected.
#[test]
fn fallback_not_self() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.failover.enabled = true;
    spec.failover.fallback = Some("auth".into());
    assert_eq!(
        fields(validate(&ms("auth", spec), None, &none)),
        vec!["spec.failover.fallback"]
    );
}

/// Bad names, ports, config keys, paths and duplicate env names are reported by field, in
/// field order; a port name breaking both its pattern and its CEL rule gets both errors, as
/// from the API server.
#[test]
fn field_level_errors() {
    let mut spec = MicroServiceSpec::with_image(" ");
    spec.port = 0;
    spec.port_name = "HTTP".into();
    spec.config = Some([("bad key".to_string(), "v".to_string())].into());
    spec.config_mount_path = Some("etc".into());
    spec.health.readiness_path = "readyz".into();
    spec.env = Some(vec![
        EnvVar {
            name: "A".into(),
            ..EnvVar::default()
        },
        EnvVar {
            name: "A".into(),
            ..EnvVar::default()
        },
    ]);
    spec.pod_annotations = Some([("flotilla.rs/config-hash".to_string(), "x".to_string())].into());
    let got = fields(validate(&ms("Auth", spec), None, &none));
    assert_eq!(
        got,
        vec![
            "metadata.name",
            "spec.configMountPath",
            "spec.config[bad key]",
            "spec.env[1]",
            "spec.health.readinessPath",
            "spec.image",
            "spec.podAnnotations[flotilla.rs/config-hash]",
            "spec.port",
            "spec.portName",
            "spec.portName",
        ]
    );
}

/// The error message names every field.
#[test]
fn error_display_names_fields() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.port = 70000;
    let err = validate(&ms("auth", spec), None, &none)
        .err()
        .unwrap_or_else(|| panic!("invalid"));
    assert_eq!(
        err.to_string(),
        "spec.port: should be less than or equal to 65535"
    );
}

/// A NaN error rate, which JSON (and so the schema) cannot carry, is still refused.
#[test]
fn nan_error_rate_is_refused() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.failover.scrape_metrics = true;
    spec.failover.max_error_rate = Some(f64::NAN);
    spec.rollout.max_error_rate = f64::NAN;
    assert_eq!(
        fields(validate(&ms("auth", spec), None, &none)),
        vec!["spec.failover.maxErrorRate", "spec.rollout.maxErrorRate"]
    );
}

/// maxErrorRate without metrics scraping is refused, as by the CRD's rule.
#[test]
fn max_error_rate_needs_scraping() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.failover.max_error_rate = Some(0.5);
    assert_eq!(
        fields(validate(&ms("auth", spec.clone()), None, &none)),
        vec!["spec.failover"]
    );
    spec.failover.scrape_metrics = true;
    assert!(validate(&ms("auth", spec), None, &none).is_ok());
}

/// Name helpers follow the Kubernetes rules.
#[test]
fn name_helpers() {
    assert!(is_dns_label("auth-2"));
    assert!(!is_dns_label("2auth"));
    assert!(!is_dns_label("auth-"));
    assert!(!is_dns_label(&"a".repeat(64)));
    assert!(is_label_value(""));
    assert!(is_label_value("shop.v1"));
    assert!(!is_label_value("-shop"));
    assert!(is_env_name("_A1"));
    assert!(!is_env_name("1A"));
    assert!(!is_env_name("a.b"));
}

/// The rollout and traffic-policy rules of the schema hold for `render` input too: a canary size
/// given twice and out-of-range percentages are reported by field.
#[test]
fn rollout_rules() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.rollout.canary_replicas = Some(1);
    spec.rollout.canary_percent = Some(10);
    spec.rollout.max_error_rate = 1.5;
    spec.failover.max_ejection_percent = 101;
    spec.failover.panic_threshold_percent = -1;
    assert_eq!(
        fields(validate(&ms("auth", spec), None, &none)),
        vec![
            "spec.failover.maxEjectionPercent",
            "spec.failover.panicThresholdPercent",
            "spec.rollout",
            "spec.rollout.maxErrorRate",
        ]
    );
}
