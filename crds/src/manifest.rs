//! The generated CustomResourceDefinition and the API reference derived from it.
//!
//! `crds/microservices.flotilla.rs.yaml` and the reference table in `crds/README.md` are the
//! output of these functions; tests fail when the committed copies are stale.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

use crate::MicroService;

/// Marker line opening the generated reference section in `crds/README.md`.
pub const REFERENCE_BEGIN: &str = "<!-- BEGIN GENERATED API REFERENCE -->";
/// Marker line closing the generated reference section in `crds/README.md`.
pub const REFERENCE_END: &str = "<!-- END GENERATED API REFERENCE -->";

/// The MicroService CustomResourceDefinition, with every description reflowed as prose.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = MicroService::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            reflow_schema(schema);
        }
    }
    crd
}

/// Rewrites the descriptions of `schema` and everything below it with [`reflow`].
fn reflow_schema(schema: &mut JSONSchemaProps) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    if let Some(d) = schema.description.as_mut() {
        *d = reflow(d);
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        reflow_schema(child);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(s)) => reflow_schema(s),
        Some(JSONSchemaPropsOrArray::Schemas(list)) => list.iter_mut().for_each(reflow_schema),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(s)) = schema.additional_properties.as_mut() {
        reflow_schema(s);
    }
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        list.iter_mut().flatten().for_each(reflow_schema);
    }
}

/// Joins the hard line wraps of a doc comment into prose, as `kubectl explain` expects one
/// line per paragraph: a blank line still separates paragraphs, and a line opening a list
/// item (`- `, `* `, `1. `) still starts a new line.
pub fn reflow(text: &str) -> String {
    let mut out = String::new();
    let mut blank = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if blank {
            out.push_str("\n\n");
        } else if !out.is_empty() {
            out.push(if starts_list_item(line) { '\n' } else { ' ' });
        }
        blank = false;
        out.push_str(line);
    }
    out
}

fn starts_list_item(line: &str) -> bool {
    if line.starts_with("- ") || line.starts_with("* ") {
        return true;
    }
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && line[digits..].starts_with(". ")
}

/// The CRD as a YAML document, exactly as `flotilla-operator crd` prints it.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&crd())
}

/// Fields whose type is a Kubernetes core type; the reference names the type instead of
/// listing its (well documented) sub-fields.
const OPAQUE: &[(&str, &str)] = &[
    ("spec.env", "[]EnvVar"),
    ("spec.resources", "ResourceRequirements"),
    ("spec.tolerations", "[]Toleration"),
    ("spec.imagePullSecrets", "[]LocalObjectReference"),
    ("status.conditions", "[]Condition"),
];

/// A Markdown table (field, type, default, description) of every spec and status field,
/// generated from the CRD schema so the documentation cannot drift from the API.
pub fn api_reference_markdown() -> String {
    let mut out = String::new();
    let crd = crd();
    let root = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref());
    let Some(props) = root.and_then(|r| r.properties.as_ref()) else {
        return out;
    };
    for section in ["spec", "status"] {
        if let Some(schema) = props.get(section) {
            out.push_str(&format!("\n### `{section}`\n\n"));
            out.push_str("| Field | Type | Default | Description |\n");
            out.push_str("|---|---|---|---|\n");
            rows(section, schema, &mut out);
        }
    }
    out
}

fn rows(path: &str, schema: &JSONSchemaProps, out: &mut String) {
    let Some(props) = schema.properties.as_ref() else {
        return;
    };
    let required = schema.required.clone().unwrap_or_default();
    for (name, prop) in props {
        let field = format!("{path}.{name}");
        let opaque = OPAQUE.iter().find(|(p, _)| *p == field).map(|(_, t)| *t);
        let ty = opaque
            .map(str::to_string)
            .unwrap_or_else(|| type_name(prop));
        let default = prop
            .default
            .as_ref()
            .map(|d| format!("`{}`", serde_json::to_string(&d.0).unwrap_or_default()))
            .unwrap_or_default();
        let mut desc = prop
            .description
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if required.contains(name) {
            desc.push_str(" Required.");
        }
        desc.push_str(&constraints(prop));
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            field
                .trim_start_matches("spec.")
                .trim_start_matches("status."),
            ty,
            default,
            desc.trim().replace('|', "\\|")
        ));
        if opaque.is_none() {
            rows(&field, prop, out);
            if let Some(items) = array_items(prop) {
                rows(&format!("{field}[]"), items, out);
            }
        }
    }
}

fn array_items(prop: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
    match prop.items.as_ref()? {
        JSONSchemaPropsOrArray::Schema(s) => Some(s),
        JSONSchemaPropsOrArray::Schemas(_) => None,
    }
}

fn type_name(prop: &JSONSchemaProps) -> String {
    let base = prop.type_.clone().unwrap_or_else(|| "any".to_string());
    match base.as_str() {
        "array" => format!("[]{}", array_items(prop).map(type_name).unwrap_or_default()),
        "object" if prop.properties.is_none() => {
            let value = prop
                .additional_properties
                .as_ref()
                .map(|_| "string")
                .unwrap_or("object");
            format!("map[string]{value}")
        }
        _ => base,
    }
}

fn constraints(prop: &JSONSchemaProps) -> String {
    let mut c = Vec::new();
    if let Some(e) = &prop.enum_ {
        let vals: Vec<String> = e
            .iter()
            .map(|v| format!("`{}`", v.0.as_str().unwrap_or_default()))
            .collect();
        c.push(format!("One of {}.", vals.join(", ")));
    }
    match (prop.minimum, prop.maximum) {
        (Some(lo), Some(hi)) => c.push(format!("Range {lo}–{hi}.")),
        (Some(lo), None) => c.push(format!("Minimum {lo}.")),
        (None, Some(hi)) => c.push(format!("Maximum {hi}.")),
        (None, None) => {}
    }
    if let Some(p) = &prop.pattern {
        c.push(format!("Pattern `{p}`."));
    }
    if let Some(rules) = &prop.x_kubernetes_validations {
        for r in rules {
            if let Some(m) = &r.message {
                c.push(format!("Rule: {m}."));
            }
        }
    }
    if c.is_empty() {
        String::new()
    } else {
        format!(" {}", c.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRD carries the API coordinates of the shared contract.
    #[test]
    fn crd_names_match_constants() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some(crate::CRD_NAME));
        assert_eq!(crd.spec.group, crate::GROUP);
        assert_eq!(crd.spec.names.kind, crate::KIND);
        assert_eq!(crd.spec.names.plural, crate::PLURAL);
        assert_eq!(
            crd.spec.names.short_names,
            Some(vec![crate::SHORT_NAME.to_string()])
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, crate::VERSION);
        let sub = v
            .subresources
            .as_ref()
            .unwrap_or_else(|| panic!("subresources"));
        assert!(sub.status.is_some());
        let scale = sub
            .scale
            .as_ref()
            .unwrap_or_else(|| panic!("scale subresource"));
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            cols,
            vec![
                ("Ready", ".status.ready"),
                ("Active", ".status.failover.active"),
                ("Held", ".status.failover.held"),
                ("Rollout", ".status.rollout.phase"),
                ("RPS", ".status.traffic.requestsPerSecond"),
                ("Errors", ".status.traffic.errorRatio"),
                ("P99-ms", ".status.traffic.p99LatencyMillis"),
                ("Image", ".spec.image"),
                ("Age", ".metadata.creationTimestamp")
            ]
        );
    }

    /// Wrapped lines become one line per paragraph; paragraphs and list items stay apart.
    #[test]
    fn reflow_keeps_paragraphs_and_lists() {
        assert_eq!(
            reflow("fail over to a\nfallback service."),
            "fail over to a fallback service."
        );
        assert_eq!(reflow("one\n two\n\nthree"), "one two\n\nthree");
        assert_eq!(
            reflow("kinds:\n- a\n  wrapped\n- b\n1. c"),
            "kinds:\n- a wrapped\n- b\n1. c"
        );
        assert_eq!(reflow(""), "");
    }

    /// No description in the generated CRD breaks a sentence across lines.
    #[test]
    fn descriptions_are_reflowed() {
        let yaml = crd_yaml().unwrap_or_default();
        let crd: serde_json::Value = serde_norway::from_str(&yaml).unwrap_or_default();
        let failover = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["failover"]["description"];
        let text = failover.as_str().unwrap_or_default();
        assert!(
            text.contains("fail over to a fallback MicroService"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    /// The reference lists nested fields with their defaults.
    #[test]
    fn reference_has_nested_defaults() {
        let md = api_reference_markdown();
        assert!(
            md.contains("| `health.periodMillis` | integer | `500` |"),
            "{md}"
        );
        assert!(md.contains("| `image` | string |  |"), "{md}");
        assert!(md.contains("| `failover.pods[].name` |"), "{md}");
    }
}
