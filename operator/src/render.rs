//! `flotilla-operator render`: MicroService YAML documents in, the children the controller
//! builds for each spec out (ConfigMap, Deployment, Service, HorizontalPodAutoscaler), as
//! YAML, with no cluster. It uses the controller's validation and builders, and checks the
//! documents against the CRD schema as `kubectl apply` asks the API server to (unknown fields
//! are errors), so a spec that renders is one the API server admits.
//!
//! What only a running cluster decides is not shown: fields the API server defaults, a
//! canary Deployment while a guarded rollout is under way, the failover engine's membership
//! labels on pods, the ports of dependencies that are not in the input (assumed 80), and the
//! running operator's public verdict keys (`FLOTILLA_VERDICT_KEYS`, added to every container).
//! Documents of other kinds (a Secret next to its MicroService) are skipped with a warning.
//! Errors name the document (1-based, in input order) and the field.

use std::collections::BTreeMap;
use std::fmt;

use flotilla_crds::{MicroService, API_VERSION, KIND};
use serde::Deserialize;
use serde_json::Value;

use crate::build::OperatorInputs;
use crate::build::{build, DesiredResources};
use crate::validate::{schema, validate};

/// A problem with one input document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// 1-based position of the document in the input.
    pub document: usize,
    /// Path of the offending field (`spec.replicas`), or `-` for the document as a whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "document {}: {}: {}",
            self.document, self.field, self.message
        )
    }
}

/// Every problem found in the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct RenderError(pub Vec<DocumentError>);

/// The rendered objects, plus warnings (e.g. dependencies not found in the input).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Multi-document YAML of every child object.
    pub yaml: String,
    /// Non-fatal findings.
    pub warnings: Vec<String>,
}

fn doc_err(document: usize, field: impl Into<String>, message: impl Into<String>) -> DocumentError {
    DocumentError {
        document,
        field: field.into(),
        message: message.into(),
    }
}

/// What one input document is.
enum Parsed {
    /// An empty document.
    Empty,
    /// Another kind of object (e.g. a Secret next to the MicroService); skipped.
    Other(String),
    /// A MicroService.
    MicroService(Box<MicroService>),
}

fn parse_document(index: usize, doc: Value) -> Result<Parsed, Vec<DocumentError>> {
    let one = |field: &str, message: String| vec![doc_err(index, field, message)];
    let obj = match doc {
        Value::Null => return Ok(Parsed::Empty),
        Value::Object(o) => o,
        _ => return Err(one("-", "expected a YAML mapping".into())),
    };
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind.is_empty() {
        return Err(one("kind", "is required".into()));
    }
    if kind != KIND {
        return Ok(Parsed::Other(kind.to_string()));
    }
    if api_version != API_VERSION {
        return Err(one(
            "apiVersion",
            format!("expected {API_VERSION}, found {api_version:?}"),
        ));
    }
    let mut obj = obj;
    let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
        return Err(one("spec", "is required and must be a mapping".into()));
    };
    schema::drop_nulls(spec);
    let schema_errors = schema::check_spec(spec, true);
    if !schema_errors.is_empty() {
        return Err(schema_errors
            .into_iter()
            .map(|e| doc_err(index, e.field, e.message))
            .collect());
    }
    // The schema passed, so a decoding error is rare; it still names the field.
    match serde_path_to_error::deserialize::<_, MicroService>(Value::Object(obj)) {
        Ok(ms) => Ok(Parsed::MicroService(Box::new(ms))),
        Err(e) => {
            let field = match e.path().to_string() {
                p if p == "." => "-".to_string(),
                p => p,
            };
            Err(one(&field, e.into_inner().to_string()))
        }
    }
}

/// Renders every MicroService in `input` (YAML, `---`-separated). Objects without a namespace
/// are placed in `namespace`.
pub fn render(input: &str, namespace: &str) -> Result<Rendered, RenderError> {
    let mut errors = Vec::new();
    let mut services = Vec::new();
    let mut skipped = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(input).enumerate() {
        let index = i + 1;
        let value = match serde_norway::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                errors.push(doc_err(index, "-", format!("invalid YAML: {e}")));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        let json = match serde_json::to_value(&value) {
            Ok(j) => j,
            Err(e) => {
                errors.push(doc_err(index, "-", format!("unsupported YAML: {e}")));
                continue;
            }
        };
        match parse_document(index, json) {
            Ok(Parsed::MicroService(ms)) => services.push((index, *ms)),
            Ok(Parsed::Other(kind)) => {
                skipped.push(format!("document {index}: {kind} is not a {KIND}; skipped"))
            }
            Ok(Parsed::Empty) => {}
            Err(e) => errors.extend(e),
        }
    }

    // Dependencies resolve against the other MicroServices of the same input.
    let ports: BTreeMap<(String, String), i32> = services
        .iter()
        .map(|(_, ms)| {
            let ns = ms
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_string());
            (
                (ns, ms.metadata.name.clone().unwrap_or_default()),
                ms.spec.service.port,
            )
        })
        .collect();
    let mut out = String::new();
    let mut warnings = skipped;
    for (index, ms) in &services {
        let ns = ms
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| namespace.to_string());
        let lookup = |dep: &str| ports.get(&(ns.clone(), dep.to_string())).copied();
        match validate(ms, Some(namespace), &lookup) {
            Ok(v) => {
                for dep in &v.missing_dependencies {
                    warnings.push(format!(
                        "document {index}: dependency {dep:?} is not in the input; assuming Service port 80"
                    ));
                }
                if let Err(e) = append_yaml(&mut out, build(&v.spec, &OperatorInputs::default())) {
                    errors.push(doc_err(*index, "-", e.to_string()));
                }
            }
            Err(invalid) => {
                for f in invalid.errors {
                    errors.push(doc_err(*index, f.field, f.message));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(Rendered {
            yaml: out,
            warnings,
        })
    } else {
        Err(RenderError(errors))
    }
}

fn append_yaml(out: &mut String, d: DesiredResources) -> Result<(), serde_norway::Error> {
    let DesiredResources {
        deployment,
        service,
        config_map,
        hpa,
    } = d;
    let mut push = |doc: String| {
        out.push_str("---\n");
        out.push_str(&doc);
    };
    if let Some(cm) = config_map {
        push(serde_norway::to_string(&cm)?);
    }
    push(serde_norway::to_string(&deployment)?);
    push(serde_norway::to_string(&service)?);
    if let Some(h) = hpa {
        push(serde_norway::to_string(&h)?);
    }
    Ok(())
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
