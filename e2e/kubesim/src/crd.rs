//! CustomResourceDefinitions: validation of the CRD itself (names, versions, structural
//! schemas), its status conditions, and serving its resource by registering a
//! [`ResourceDef`] built from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::api::now;
use crate::registry::{PrinterColumn, ResKey, ResourceDef, ScalePaths, STANDARD_VERBS};
use crate::schema::structural;
use crate::status::{ApiError, Cause};
use crate::store::State;
use crate::validate;

pub fn is_crd(def: &ResourceDef) -> bool {
    def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions"
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Validation of a CRD object beyond its type: names, versions and structural schemas.
pub fn validate(crd: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let group = s(crd, "/spec/group");
    let plural = s(crd, "/spec/names/plural");
    let name = s(crd, "/metadata/name");
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    }
    if s(crd, "/spec/names/kind").is_empty() {
        causes.push(Cause::required("spec.names.kind"));
    }
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    for (field, v) in [
        ("spec.names.plural", plural),
        ("spec.names.singular", s(crd, "/spec/names/singular")),
    ] {
        if !v.is_empty() {
            for e in validate::label_name_errors(v) {
                causes.push(Cause::invalid(field, &json!(v), &e));
            }
        }
    }
    let scope = s(crd, "/spec/scope");
    if !matches!(scope, "Namespaced" | "Cluster") {
        causes.push(Cause::not_supported(
            "spec.scope",
            &json!(scope),
            &["Cluster".into(), "Namespaced".into()],
        ));
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(versions
                .iter()
                .map(|v| v["name"].clone())
                .collect::<Vec<_>>()),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let field = format!("spec.versions[{i}].schema.openAPIV3Schema");
        match v.pointer("/schema/openAPIV3Schema") {
            None => causes.push(Cause::new(
                "FieldValueRequired",
                "Required value: schemas are required",
                field,
            )),
            Some(schema) => {
                let structural = structural::check(schema, &field);
                if structural.is_empty() {
                    causes.extend(crate::schema::cel::compile(schema, &field).1);
                }
                causes.extend(structural);
            }
        }
    }
    causes
}

/// Sets the CRD's status as the apiextensions controllers do once it is served.
pub fn admit(_st: &mut State, crd: &mut Value, old: Option<&Arc<Value>>) -> Result<(), ApiError> {
    let established = old
        .and_then(|o| o.pointer("/status/conditions").cloned())
        .filter(|c| c.as_array().is_some_and(|a| a.len() >= 2));
    let ts = now();
    let conditions = established.unwrap_or_else(|| {
        json!([
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": ts},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": ts},
        ])
    });
    let storage: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"] == json!(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    let mut stored = old
        .and_then(|o| {
            o.pointer("/status/storedVersions")
                .and_then(Value::as_array)
                .cloned()
        })
        .unwrap_or_default();
    for v in storage {
        if !stored.contains(&v) {
            stored.push(v);
        }
    }
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut accepted = names.clone();
    if accepted.get("singular").is_none() {
        accepted["singular"] = json!(s(crd, "/spec/names/kind").to_lowercase());
    }
    if accepted.get("listKind").is_none() {
        accepted["listKind"] = json!(format!("{}List", s(crd, "/spec/names/kind")));
    }
    crd["status"] =
        json!({"conditions": conditions, "acceptedNames": accepted, "storedVersions": stored});
    Ok(())
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The resource a CRD serves.
pub fn definition(crd: &Value) -> ResourceDef {
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let served: Vec<&Value> = versions
        .iter()
        .filter(|v| v["served"] != json!(false))
        .collect();
    let mut names: Vec<String> = Vec::new();
    if let Some(st) = served.iter().find(|v| v["storage"] == json!(true)) {
        names.push(s(st, "/name").to_string());
    }
    for v in &served {
        let n = s(v, "/name").to_string();
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let storage = served
        .iter()
        .find(|v| v["storage"] == json!(true))
        .or(served.first())
        .copied();
    let sub = storage.and_then(|v| v.get("subresources"));
    let scale = sub.and_then(|s| s.get("scale")).map(|sc| ScalePaths {
        spec_replicas: s(sc, "/specReplicasPath").to_string(),
        status_replicas: s(sc, "/statusReplicasPath").to_string(),
        label_selector: sc
            .get("labelSelectorPath")
            .and_then(Value::as_str)
            .map(String::from),
    });
    let mut schemas = BTreeMap::new();
    let mut cel_rules = BTreeMap::new();
    let mut columns = BTreeMap::new();
    for v in &served {
        let n = s(v, "/name").to_string();
        if let Some(schema) = v.pointer("/schema/openAPIV3Schema") {
            schemas.insert(n.clone(), schema.clone());
            cel_rules.insert(n.clone(), crate::schema::cel::rules_for(schema));
        }
        let cols: Vec<PrinterColumn> = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| PrinterColumn {
                        name: s(c, "/name").to_string(),
                        type_: s(c, "/type").to_string(),
                        format: s(c, "/format").to_string(),
                        description: s(c, "/description").to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: s(c, "/jsonPath").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        columns.insert(n, cols);
    }
    let kind = s(crd, "/spec/names/kind").to_string();
    let singular = match s(crd, "/spec/names/singular") {
        "" => kind.to_lowercase(),
        x => x.to_string(),
    };
    ResourceDef {
        group: s(crd, "/spec/group").to_string(),
        versions: names,
        kind,
        plural: s(crd, "/spec/names/plural").to_string(),
        singular,
        namespaced: s(crd, "/spec/scope") == "Namespaced",
        short_names: strings(crd.pointer("/spec/names/shortNames")),
        categories: strings(crd.pointer("/spec/names/categories")),
        status: sub.and_then(|s| s.get("status")).is_some(),
        scale,
        decoder: None,
        openapi: None,
        schemas,
        cel_rules,
        printer_columns: columns,
        crd: Some(s(crd, "/metadata/name").to_string()),
        verbs: STANDARD_VERBS.to_vec(),
    }
}

pub fn register(st: &mut State, crd: &Value) {
    st.registry.insert(definition(crd));
}

/// Stops serving a deleted CRD's resource and drops its objects.
pub fn unregister(st: &mut State, crd: &Value) {
    let key = ResKey {
        group: s(crd, "/spec/group").to_string(),
        plural: s(crd, "/spec/names/plural").to_string(),
    };
    st.remove_all(&key);
    st.registry.remove(&key);
}
