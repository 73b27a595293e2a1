//! Rendering the Helm charts and validating what they render: against the Kubernetes OpenAPI
//! schemas (`kubernetes-validate`) and, for MicroServices, against the CRD's `openAPIV3Schema`
//! (`jsonschema`). Parsing of tool output is pure and tested here; running the tools is in
//! [`crate::tools`].

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use serde_json::Value;

use crate::tools;

/// Kubernetes version the rendered manifests are validated against.
pub const KUBE_VERSION: &str = "1.32.0";

/// Directory of the chart `name` under `charts/`.
pub fn chart_dir(name: &str) -> PathBuf {
    tools::repo_root().join("charts").join(name)
}

/// The generated CRD manifest under `crds/`.
pub fn generated_crd_path() -> PathBuf {
    tools::repo_root()
        .join("crds")
        .join("microservices.flotilla.rs.yaml")
}

/// The copy of the CRD that the chart installs.
pub fn chart_crd_path() -> PathBuf {
    chart_dir("flotilla")
        .join("crds")
        .join("microservices.flotilla.rs.yaml")
}

/// `helm template` arguments for `chart` as release `release` in `namespace`, with `--set` values.
pub fn template_args(chart: &str, release: &str, namespace: &str, sets: &[&str]) -> Vec<String> {
    let mut args = vec![
        "template".to_owned(),
        release.to_owned(),
        chart_dir(chart).to_string_lossy().into_owned(),
        "--namespace".to_owned(),
        namespace.to_owned(),
    ];
    for set in sets {
        args.push("--set".to_owned());
        args.push((*set).to_owned());
    }
    args
}

/// Renders `chart` with `helm template` and returns the manifest text.
pub fn render(chart: &str, release: &str, namespace: &str, sets: &[&str]) -> Result<String> {
    let helm = tools::find("helm")?;
    tools::run_ok(&helm, template_args(chart, release, namespace, sets), None)
}

/// Splits a multi-document YAML stream into JSON values, dropping empty documents.
pub fn split_documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (index, doc) in serde_norway::Deserializer::from_str(yaml).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("YAML document {index} does not parse"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// `kind` of a rendered object ("" when missing).
pub fn kind_of(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or_default()
}

/// `metadata.name` of a rendered object ("" when missing).
pub fn name_of(doc: &Value) -> &str {
    doc.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// What `kubernetes-validate` said about a stream of objects.
#[derive(Debug, Default, PartialEq)]
pub struct ValidateReport {
    /// `kind/name` of every object that passed.
    pub passed: Vec<String>,
    /// Every ERROR or FATAL line (validation failures and tool failures).
    pub errors: Vec<String>,
    /// Kinds the tool has no schema for (custom resources), as printed in its WARN lines.
    pub no_schema: Vec<String>,
}

/// Parses `kubernetes-validate`'s line output.
pub fn parse_validate_output(stdout: &str) -> ValidateReport {
    let mut report = ValidateReport::default();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("INFO ") {
            if let Some(resource) = rest
                .split_once(" passed for resource ")
                .and_then(|(_, tail)| tail.split_once(" against version "))
                .map(|(resource, _)| resource.to_owned())
            {
                report.passed.push(resource);
            }
        } else if let Some(rest) = line.strip_prefix("WARN ") {
            match rest
                .split_once("Couldn't find schema for kind ")
                .and_then(|(_, tail)| tail.split_once(' '))
            {
                Some((kind, _)) => report.no_schema.push(kind.to_owned()),
                None => report.errors.push(line.to_owned()),
            }
        } else if line.starts_with("ERROR ") || line.starts_with("FATAL ") {
            report.errors.push(line.to_owned());
        }
    }
    report
}

/// Validates a YAML stream against the Kubernetes schemas of [`KUBE_VERSION`], strictly (unknown
/// fields are errors).
pub fn kubernetes_validate(yaml: &str) -> Result<ValidateReport> {
    let validate = tools::find("kubernetes-validate")?;
    let output = tools::run(
        &validate,
        ["--strict", "-k", KUBE_VERSION, "-"],
        Some(yaml.as_bytes()),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = parse_validate_output(&stdout);
    if !output.status.success() && report.errors.is_empty() {
        bail!(
            "kubernetes-validate failed ({}) without an ERROR line:\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(report)
}

/// The `openAPIV3Schema` of the `v1alpha1` version of the CRD at `crd_yaml`.
pub fn crd_schema(crd_yaml: &str) -> Result<Value> {
    let crd = split_documents(crd_yaml)?
        .into_iter()
        .next()
        .context("CRD manifest is empty")?;
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .context("CRD has no spec.versions")?;
    versions
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(flotilla_crds::VERSION))
        .and_then(|v| v.pointer("/schema/openAPIV3Schema"))
        .cloned()
        .context("CRD has no openAPIV3Schema for v1alpha1")
}

/// Python run in the venv: validates each object (a JSON list on stdin) against the schema
/// (argv[1]) and prints one `name: path: message` line per violation.
const JSONSCHEMA_CHECK: &str = r#"
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
validator = jsonschema.Draft7Validator(schema)
bad = 0
for doc in json.load(sys.stdin):
    name = doc.get("metadata", {}).get("name", "?")
    for err in validator.iter_errors(doc):
        bad += 1
        path = ".".join(str(p) for p in err.absolute_path)
        print(f"{name}: {path}: {err.message}")
sys.exit(1 if bad else 0)
"#;

/// Validates `objects` against the CRD `openAPIV3Schema` with Python's `jsonschema`. Returns one
/// line per violation (empty when all are valid). CEL rules (`x-kubernetes-validations`) are not
/// evaluated here; the API server checks them.
pub fn jsonschema_violations(schema: &Value, objects: &[Value]) -> Result<Vec<String>> {
    let python = tools::venv_python()?;
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let schema_path = dir.path().join("schema.json");
    std::fs::write(&schema_path, serde_json::to_vec(schema)?).context("writing the schema")?;
    let input = serde_json::to_vec(objects)?;
    let schema_arg = schema_path.to_string_lossy().into_owned();
    let output = tools::run(
        &python,
        ["-c", JSONSCHEMA_CHECK, schema_arg.as_str()],
        Some(&input),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let violations: Vec<String> = stdout.lines().map(str::to_owned).collect();
    match (output.status.success(), violations.is_empty()) {
        (true, true) | (false, false) => Ok(violations),
        _ => bail!(
            "jsonschema check failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Custom resources `kubernetes-validate` has no schema for. MicroServices are checked against the
/// CRD schema instead; the Prometheus Operator's kinds (ServiceMonitor, PodMonitor,
/// PrometheusRule) by the chart checks' own assertions, and the PrometheusRule's groups by
/// `promtool`.
pub const CUSTOM_KINDS: &[&str] = &[
    "MicroService",
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
];

/// Renders `chart` and splits the output into objects.
pub fn render_docs(
    chart: &str,
    release: &str,
    namespace: &str,
    sets: &[&str],
) -> Result<Vec<Value>> {
    split_documents(&render(chart, release, namespace, sets)?)
}

/// The first object of `kind` in `docs`.
pub fn find_kind<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| kind_of(d) == kind)
        .with_context(|| format!("no {kind} rendered"))
}

/// The first Deployment in `docs`, typed.
pub fn operator_deployment(docs: &[Value]) -> Result<Deployment> {
    serde_json::from_value(find_kind(docs, "Deployment")?.clone())
        .context("Deployment does not parse")
}

/// The first container of a rendered Deployment (the operator's, in the operator chart).
pub fn first_container(deployment: &Deployment) -> Result<&Container> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .context("Deployment has no container")
}

/// Renders `chart` and checks every object: built-in kinds against the Kubernetes schemas of
/// [`KUBE_VERSION`] (strict), MicroServices against the CRD schema; only [`CUSTOM_KINDS`] may lack
/// a schema. Returns the objects.
pub fn render_and_validate(
    chart: &str,
    release: &str,
    namespace: &str,
    sets: &[&str],
) -> Result<Vec<Value>> {
    let yaml = render(chart, release, namespace, sets)?;
    let docs = split_documents(&yaml)?;
    ensure!(!docs.is_empty(), "{chart} rendered nothing");

    let report = kubernetes_validate(&yaml)?;
    ensure!(
        report.errors.is_empty(),
        "kubernetes-validate rejected {chart}:\n{}",
        report.errors.join("\n")
    );
    let custom = docs
        .iter()
        .filter(|d| CUSTOM_KINDS.contains(&kind_of(d)))
        .count();
    ensure!(
        report.passed.len() + custom == docs.len(),
        "{} of {} objects passed and {custom} are custom resources; passed: {:?}",
        report.passed.len(),
        docs.len(),
        report.passed
    );
    for kind in &report.no_schema {
        ensure!(
            CUSTOM_KINDS.contains(&kind.as_str()),
            "no schema for built-in-looking kind {kind}"
        );
    }

    let microservices: Vec<Value> = docs
        .iter()
        .filter(|d| kind_of(d) == "MicroService")
        .cloned()
        .collect();
    if !microservices.is_empty() {
        let crd =
            std::fs::read_to_string(generated_crd_path()).context("reading the generated CRD")?;
        let schema = crd_schema(&crd)?;
        let violations = jsonschema_violations(&schema, &microservices)?;
        ensure!(
            violations.is_empty(),
            "MicroServices violate the CRD schema:\n{}",
            violations.join("\n")
        );
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_drops_empty_documents() {
        // helm output starts with `---` and may contain empty documents; they are not objects.
        let docs = split_documents("---\n# only a comment\n---\nkind: A\n---\n\n---\nkind: B\n")
            .expect("parses");
        let kinds: Vec<&str> = docs.iter().map(kind_of).collect();
        assert_eq!(kinds, ["A", "B"]);
    }

    #[test]
    fn split_reports_broken_yaml() {
        // A document that does not parse is an error, not a skipped object.
        assert!(split_documents("kind: A\n---\n: : [\n").is_err());
    }

    #[test]
    fn validate_output_is_classified() {
        // Passed objects, errors and missing schemas are each counted once.
        let out = "INFO - passed for resource deployment/op against version 1.32\n\
                   ERROR - did not validate for resource service/x against version 1.32: spec: bad\n\
                   WARN - Couldn't find schema for kind MicroService with api version flotilla.rs/v1alpha1 for kubernetes version 1.32\n\
                   FATAL kubernetes-validate 1 does not support kubernetes version 9\n";
        let report = parse_validate_output(out);
        assert_eq!(report.passed, ["deployment/op"]);
        assert_eq!(report.errors.len(), 2);
        assert_eq!(report.no_schema, ["MicroService"]);
    }

    #[test]
    fn unknown_warning_is_an_error() {
        // A WARN line we do not understand must not pass unnoticed.
        let report = parse_validate_output("WARN something new\n");
        assert_eq!(report.errors, ["WARN something new"]);
    }

    #[test]
    fn crd_schema_is_found_by_version() {
        // The schema of the served version is picked from the CRD.
        let crd = "kind: CustomResourceDefinition\nspec:\n  versions:\n  - name: v1alpha1\n    schema:\n      openAPIV3Schema:\n        type: object\n";
        let schema = crd_schema(crd).expect("schema found");
        assert_eq!(schema, serde_json::json!({"type": "object"}));
    }
}
