//! OpenAPI documents for `kubectl explain` and `kubectl apply` validation: `/openapi/v3`
//! (an index plus one document per group version, with each custom resource's schema) and a
//! `/openapi/v2`. Built-in kinds use the schemas of their k8s-openapi types (with the real
//! definition names, e.g. `io.k8s.api.apps.v1.Deployment`); custom resources their CRD schema.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::registry::{Registry, ResourceDef};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The name a schema is registered under: reversed group, version, kind
/// (`rs.flotilla.v1alpha1.MicroService`), as the real server names CRD schemas.
fn schema_name(def: &ResourceDef, version: &str) -> String {
    let mut parts: Vec<&str> = def.group.split('.').collect();
    parts.reverse();
    let g = if def.group.is_empty() {
        "io.k8s.api.core".to_string()
    } else {
        parts.join(".")
    };
    format!("{g}.{version}.{}", def.kind)
}

fn schema_for(def: &ResourceDef, version: &str) -> Value {
    let gvk = json!([{"group": def.group, "version": version, "kind": def.kind}]);
    let mut schema = match def.schemas.get(version) {
        Some(s) => s.clone(),
        None => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "description": format!("{} (kubesim serves no detailed schema for built-in kinds)", def.kind)}),
    };
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.entry("apiVersion").or_insert(json!({"type": "string",
            "description": "APIVersion defines the versioned schema of this representation of an object."}));
        props.entry("kind").or_insert(json!({"type": "string",
            "description": "Kind is a string value representing the REST resource this object represents."}));
        props.insert("metadata".into(), json!({"type": "object",
            "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
    }
    schema["x-kubernetes-group-version-kind"] = gvk;
    schema
}

fn params() -> Value {
    json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
    ])
}

fn paths_for(def: &ResourceDef, version: &str) -> Map<String, Value> {
    let base = format!("/{}", gv_path(&def.group, version));
    let prefix = if def.namespaced {
        format!("{base}/namespaces/{{namespace}}")
    } else {
        base
    };
    let gvk = json!({"group": def.group, "version": version, "kind": def.kind});
    let op = |action: &str| {
        json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
        "parameters": params(), "responses": {"200": {"description": "OK"}}})
    };
    let mut m = Map::new();
    m.insert(
        format!("{prefix}/{}", def.plural),
        json!({"post": op("post"), "get": op("list")}),
    );
    m.insert(
        format!("{prefix}/{}/{{name}}", def.plural),
        json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
    );
    m
}

/// Definitions for the built-in kinds among `defs` (and everything they reference), keyed by
/// definition name, with each kind's root schema tagged with its group/version/kind.
fn builtin_definitions<'a>(
    defs: impl Iterator<Item = &'a Arc<ResourceDef>>,
    definitions_path: &str,
) -> Map<String, Value> {
    let path = definitions_path.to_string();
    let mut generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| s.definitions_path = path.into())
        .into_generator();
    let mut roots = Vec::new();
    for d in defs {
        let Some(f) = d.openapi else { continue };
        let r = f(&mut generator);
        let name = r
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|s| s.rsplit('/').next())
            .map(String::from);
        if let Some(name) = name {
            let gvk = json!([{"group": d.group, "version": d.preferred_version(), "kind": d.kind}]);
            roots.push((name, gvk));
        }
    }
    let mut out = generator.take_definitions(true);
    for (name, gvk) in roots {
        if let Some(s) = out.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert("x-kubernetes-group-version-kind".into(), gvk);
        }
    }
    out
}

pub fn v3_index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, versions) in reg.groups() {
        for v in versions {
            let p = gv_path(&g, &v);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// The document of one group version (`api/v1`, `apis/<group>/<version>`).
pub fn v3_doc(reg: &Registry, gv: &str) -> Option<Value> {
    let parts: Vec<&str> = gv.split('/').collect();
    let (group, version) = match parts.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let in_gv = |d: &&Arc<ResourceDef>| d.group == group && d.versions.iter().any(|x| x == version);
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for d in reg.all().filter(in_gv) {
        if d.openapi.is_none() {
            schemas.insert(schema_name(d, version), schema_for(d, version));
        }
        paths.extend(paths_for(d, version));
    }
    if paths.is_empty() {
        return None;
    }
    schemas.extend(builtin_definitions(
        reg.all().filter(in_gv),
        "/components/schemas",
    ));
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0-kubesim"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

pub fn v2(reg: &Registry) -> Value {
    let mut defs = Map::new();
    let mut paths = Map::new();
    for d in reg.all() {
        let v = d.preferred_version();
        if d.openapi.is_none() {
            defs.insert(schema_name(d, v), schema_for(d, v));
        }
        paths.extend(paths_for(d, v));
    }
    defs.extend(builtin_definitions(reg.all(), "/definitions"));
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0-kubesim"},
        "paths": paths, "definitions": defs})
}
