//! The CRD's OpenAPI constraints, checked from the generated schema itself: types, enums,
//! ranges, lengths, patterns, item counts, list-type sets and required fields. `validate` and
//! `render` run these instead of restating each bound by hand, so they cannot drift from what
//! the API server enforces. Pure: no client.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use regex::Regex;
use serde_json::Value;

use crate::validate::FieldError;

/// The schema of `spec` in the generated CRD.
static SPEC_SCHEMA: LazyLock<Option<JSONSchemaProps>> = LazyLock::new(|| {
    flotilla_crds::crd()
        .spec
        .versions
        .into_iter()
        .next()
        .and_then(|v| v.schema)
        .and_then(|s| s.open_api_v3_schema)
        .and_then(|s| s.properties)
        .and_then(|mut p| p.remove("spec"))
});

/// Checks a spec (as JSON) against the CRD's `spec` schema. With `strict`, fields the schema
/// does not declare are errors (as `kubectl apply` asks the server); otherwise they are not
/// looked at (a typed spec has none).
pub fn check_spec(spec: &Value, strict: bool) -> Vec<FieldError> {
    let mut out = Vec::new();
    if let Some(schema) = SPEC_SCHEMA.as_ref() {
        walk(spec, schema, "spec", strict, &mut out);
    }
    out
}

/// Drops `null` values of fields the schema does not mark nullable, as the API server does
/// before defaulting (`portName: null` then gets its default instead of failing to decode).
pub fn drop_nulls(spec: &mut Value) {
    if let Some(schema) = SPEC_SCHEMA.as_ref() {
        drop_nulls_at(spec, schema);
    }
}

fn drop_nulls_at(v: &mut Value, s: &JSONSchemaProps) {
    match v {
        Value::Object(m) => {
            let extra = match &s.additional_properties {
                Some(JSONSchemaPropsOrBool::Schema(a)) => Some(&**a),
                _ => None,
            };
            m.retain(|k, child| {
                let cs = s.properties.as_ref().and_then(|p| p.get(k)).or(extra);
                !(child.is_null() && cs.is_some_and(|cs| cs.nullable != Some(true)))
            });
            for (k, child) in m.iter_mut() {
                if let Some(cs) = s.properties.as_ref().and_then(|p| p.get(k)).or(extra) {
                    drop_nulls_at(child, cs);
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(is)) = &s.items {
                items.iter_mut().for_each(|i| drop_nulls_at(i, is));
            }
        }
        _ => {}
    }
}

fn push(out: &mut Vec<FieldError>, field: &str, message: String) {
    out.push(FieldError {
        field: field.to_string(),
        message,
    });
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(s: &JSONSchemaProps, v: &Value) -> bool {
    if s.x_kubernetes_int_or_string == Some(true) {
        return matches!(v, Value::String(_)) || v.as_i64().is_some();
    }
    match (s.type_.as_deref(), v) {
        (None, _) => true,
        (_, Value::Null) => s.nullable == Some(true),
        (Some("number"), Value::Number(_)) => true,
        (Some("integer"), Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        (Some(t), v) => t == type_name(v),
    }
}

fn walk(v: &Value, s: &JSONSchemaProps, path: &str, strict: bool, out: &mut Vec<FieldError>) {
    if !type_ok(s, v) {
        let want = s.type_.as_deref().unwrap_or("integer,string");
        push(
            out,
            path,
            format!("must be of type {want}, not {}", type_name(v)),
        );
        return;
    }
    bounds(v, s, path, out);
    match v {
        Value::Object(m) => {
            for r in s.required.iter().flatten() {
                if !m.contains_key(r) {
                    push(out, &format!("{path}.{r}"), "is required".into());
                }
            }
            let extra = match &s.additional_properties {
                Some(JSONSchemaPropsOrBool::Schema(a)) => Some(&**a),
                _ => None,
            };
            let open = s.x_kubernetes_preserve_unknown_fields == Some(true)
                || matches!(
                    s.additional_properties,
                    Some(JSONSchemaPropsOrBool::Bool(true))
                );
            for (k, child) in m {
                let field = if extra.is_some() {
                    format!("{path}[{k}]")
                } else {
                    format!("{path}.{k}")
                };
                match s.properties.as_ref().and_then(|p| p.get(k)).or(extra) {
                    Some(cs) => walk(child, cs, &field, strict, out),
                    None if strict && !open => push(out, &field, "unknown field".into()),
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(is)) = &s.items {
                for (i, item) in items.iter().enumerate() {
                    walk(item, is, &format!("{path}[{i}]"), strict, out);
                }
            }
            list_type(items, s, path, out);
        }
        _ => {}
    }
}

/// `x-kubernetes-list-type`: a `set` holds no value twice, a `map` no key twice.
fn list_type(items: &[Value], s: &JSONSchemaProps, path: &str, out: &mut Vec<FieldError>) {
    let keys = s.x_kubernetes_list_map_keys.clone().unwrap_or_default();
    let key_of = |v: &Value| -> Value {
        match s.x_kubernetes_list_type.as_deref() {
            Some("map") => Value::Object(
                keys.iter()
                    .filter_map(|k| v.get(k).map(|x| (k.clone(), x.clone())))
                    .collect(),
            ),
            _ => v.clone(),
        }
    };
    if !matches!(s.x_kubernetes_list_type.as_deref(), Some("set" | "map")) {
        return;
    }
    let mut seen = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = key_of(item);
        if seen.contains(&key) {
            push(
                out,
                &format!("{path}[{i}]"),
                format!("duplicate value {key}"),
            );
        } else {
            seen.push(key);
        }
    }
}

fn bounds(v: &Value, s: &JSONSchemaProps, path: &str, out: &mut Vec<FieldError>) {
    if let Some(allowed) = &s.enum_ {
        if !allowed.iter().any(|a| &a.0 == v) {
            let list: Vec<String> = allowed.iter().map(|a| a.0.to_string()).collect();
            push(
                out,
                path,
                format!(
                    "unsupported value {v}: supported values: {}",
                    list.join(", ")
                ),
            );
        }
    }
    if let Some(n) = v.as_f64() {
        if s.minimum.is_some_and(|min| n < min) {
            push(
                out,
                path,
                format!(
                    "should be greater than or equal to {}",
                    s.minimum.unwrap_or_default()
                ),
            );
        }
        if s.maximum.is_some_and(|max| n > max) {
            push(
                out,
                path,
                format!(
                    "should be less than or equal to {}",
                    s.maximum.unwrap_or_default()
                ),
            );
        }
    }
    if let Some(text) = v.as_str() {
        let chars = text.chars().count() as i64;
        if s.min_length.is_some_and(|min| chars < min) {
            push(
                out,
                path,
                format!(
                    "should be at least {} chars long",
                    s.min_length.unwrap_or_default()
                ),
            );
        }
        if s.max_length.is_some_and(|max| chars > max) {
            push(
                out,
                path,
                format!(
                    "may not be more than {} characters",
                    s.max_length.unwrap_or_default()
                ),
            );
        }
        if let Some(p) = &s.pattern {
            if !matches_pattern(p, text) {
                push(out, path, format!("should match '{p}'"));
            }
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as i64;
        if s.min_items.is_some_and(|min| n < min) {
            push(
                out,
                path,
                format!(
                    "should have at least {} items",
                    s.min_items.unwrap_or_default()
                ),
            );
        }
        if s.max_items.is_some_and(|max| n > max) {
            push(
                out,
                path,
                format!(
                    "must have at most {} items",
                    s.max_items.unwrap_or_default()
                ),
            );
        }
    }
    if let Some(m) = v.as_object() {
        if s.max_properties.is_some_and(|max| m.len() as i64 > max) {
            push(
                out,
                path,
                format!(
                    "must have at most {} entries",
                    s.max_properties.unwrap_or_default()
                ),
            );
        }
    }
}

/// Whether `text` matches the schema pattern `p`; compiled patterns are kept (the CRD has a
/// handful).
fn matches_pattern(p: &str, text: &str) -> bool {
    static CACHE: LazyLock<Mutex<HashMap<String, Option<Regex>>>> = LazyLock::new(Mutex::default);
    let Ok(mut cache) = CACHE.lock() else {
        return Regex::new(p).is_ok_and(|re| re.is_match(text));
    };
    cache
        .entry(p.to_string())
        .or_insert_with(|| Regex::new(p).ok())
        .as_ref()
        .is_some_and(|re| re.is_match(text))
}
