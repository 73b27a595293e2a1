//! Unit tests of `render`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;

use super::*;

const TWO: &str = r#"
apiVersion: flotilla.rs/v1alpha1
kind: MicroService
metadata: {name: users}
spec:
  image: flotilla/users:0.1.0
  service: {port: 8081}
---
apiVersion: flotilla.rs/v1alpha1
kind: MicroService
metadata: {name: auth, namespace: shop}
spec:
  image: flotilla/auth:0.1.0
  dependencies: [users]
  config: {LOG_LEVEL: info}
  autoscaling: {maxReplicas: 3, targetCPUUtilizationPercentage: 60}
"#;

fn kinds(yaml: &str) -> Vec<String> {
    serde_norway::Deserializer::from_str(yaml)
        .filter_map(|d| serde_norway::Value::deserialize(d).ok())
        .filter_map(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
        .collect()
}

/// Each MicroService renders to its children, optional ones only when asked for.
#[test]
fn renders_children() {
    let r = render(TWO, "default").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        kinds(&r.yaml),
        vec![
            "Deployment",
            "Service",
            "ConfigMap",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler"
        ]
    );
    // users is in namespace default, auth in shop: the dependency is not found there.
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].contains("document 2"));
}

/// Rendered documents are the typed objects (they parse back) with the namespace applied.
#[test]
fn rendered_objects_parse_back() {
    let input = "apiVersion: flotilla.rs/v1alpha1\nkind: MicroService\nmetadata: {name: users}\nspec: {image: u}\n";
    let r = render(input, "dev").unwrap_or_else(|e| panic!("{e}"));
    let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&r.yaml)
        .filter_map(|d| serde_norway::Value::deserialize(d).ok())
        .collect();
    let d: Deployment = serde_norway::from_value(docs[0].clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("dev"));
    let s: Service = serde_norway::from_value(docs[1].clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.spec.and_then(|s| s.ports).map(|p| p[0].port), Some(80));
}

/// Dependencies found in the input use their Service port.
#[test]
fn dependency_port_from_input() {
    let input = TWO.replace(
        "metadata: {name: users}",
        "metadata: {name: users, namespace: shop}",
    );
    let r = render(&input, "default").unwrap_or_else(|e| panic!("{e}"));
    assert!(r.warnings.is_empty());
    assert!(r.yaml.contains("http://users.shop.svc.cluster.local:8081"));
}

fn errors(input: &str) -> Vec<(usize, String)> {
    match render(input, "default") {
        Ok(_) => Vec::new(),
        Err(RenderError(es)) => es.into_iter().map(|e| (e.document, e.field)).collect(),
    }
}

/// Invalid documents are reported with their position and field.
#[test]
fn errors_name_document_and_field() {
    let head = "apiVersion: flotilla.rs/v1alpha1\nkind: MicroService\nmetadata: {name: a}\n";
    let ok = format!("{head}spec: {{image: x}}\n");
    let bad_type = format!("{head}spec: {{image: x, replicas: many}}\n");
    let unknown = format!("{head}spec: {{image: x, replica: 2}}\n");
    let missing = format!("{head}spec: {{replicas: 2}}\n");
    let cross = format!("{head}spec: {{image: x, autoscaling: {{minReplicas: 4, maxReplicas: 2, targetCPUUtilizationPercentage: 50}}}}\n");
    let input = [ok, bad_type, unknown, missing, cross].join("---\n");
    assert_eq!(
        errors(&input),
        vec![
            (2, "spec.replicas".to_string()),
            (3, "spec.replica".to_string()),
            (4, "spec.image".to_string()),
            (5, "spec.autoscaling".to_string()),
        ]
    );
    assert_eq!(
        errors("metadata: {name: x}\n"),
        vec![(1, "kind".to_string())]
    );
    assert_eq!(errors("a: [\n"), vec![(1, "-".to_string())]);
}

/// The error text names document and field.
#[test]
fn error_text() {
    let e = render("apiVersion: flotilla.rs/v1alpha1\nkind: MicroService\nmetadata: {name: a}\nspec: {image: x, port: 0}\n", "default")
        .err()
        .unwrap_or_else(|| panic!("invalid"));
    assert_eq!(
        e.to_string(),
        "document 1: spec.port: should be greater than or equal to 1"
    );
}

/// Other kinds in the input are skipped with a warning, not rendered and not fatal.
#[test]
fn other_kinds_are_skipped() {
    let input = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\napiVersion: flotilla.rs/v1alpha1\nkind: MicroService\nmetadata: {name: a}\nspec: {image: x}\n";
    let r = render(input, "default").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kinds(&r.yaml), vec!["Deployment", "Service"]);
    assert_eq!(
        r.warnings,
        vec!["document 1: Secret is not a MicroService; skipped".to_string()]
    );
}

/// Nested mistakes are reported at their full path, and the CRD's rules hold for render too.
#[test]
fn nested_errors_have_full_paths() {
    let head = "apiVersion: flotilla.rs/v1alpha1\nkind: MicroService\nmetadata: {name: a}\n";
    let typo = format!("{head}spec: {{image: x, health: {{periodMilis: 500}}}}\n");
    let kind = format!("{head}spec: {{image: x, env: [{{name: A, value: 1}}]}}\n");
    let rule = format!("{head}spec: {{image: x, failover: {{maxErrorRate: 0.5}}}}\n");
    let input = [typo, kind, rule].join("---\n");
    assert_eq!(
        errors(&input),
        vec![
            (1, "spec.health.periodMilis".to_string()),
            (2, "spec.env[0].value".to_string()),
            (3, "spec.failover".to_string()),
        ]
    );
}
