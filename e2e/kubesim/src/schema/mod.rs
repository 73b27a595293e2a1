//! Custom resource validation against a CRD's structural `openAPIV3Schema`: defaults are
//! applied, unknown fields pruned (and reported, for `fieldValidation=Strict`), and the
//! value checks the real server runs reported as field causes. CEL rules
//! (`x-kubernetes-validations`) are compiled and evaluated by [`cel`]. Pure functions.

pub mod cel;
pub mod structural;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use regex::Regex;
use serde_json::{Map, Value};

use crate::status::Cause;

/// Compiled `pattern`s, by source: compiling one costs far more than matching it, and every
/// write of a custom resource checks the same few patterns of its CRD. `None` for a pattern
/// that does not compile (not checked, as before). Bounded by the patterns the CRDs declare.
static PATTERNS: LazyLock<Mutex<HashMap<String, Option<Regex>>>> = LazyLock::new(Default::default);

/// The compiled `pattern`, from [`PATTERNS`].
fn pattern(p: &str) -> Option<Regex> {
    let mut cache = PATTERNS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(re) = cache.get(p) {
        return re.clone();
    }
    let re = Regex::new(p).ok();
    cache.insert(p.to_string(), re.clone());
    re
}

/// The result of processing an object against its schema.
#[derive(Debug)]
pub struct Processed {
    pub object: Value,
    /// Paths of pruned fields.
    pub unknown: Vec<String>,
    pub causes: Vec<Cause>,
}

/// Defaults, prunes and validates `obj` against the version's schema (root schema of the
/// whole object). Without a schema the object is returned unchanged.
pub fn process(schema: Option<&Value>, mut obj: Value) -> Processed {
    let mut unknown = Vec::new();
    let mut causes = Vec::new();
    if let (Some(schema), Some(root)) = (schema, obj.as_object_mut()) {
        let props = schema.get("properties").and_then(Value::as_object);
        let mut keys: Vec<String> = root.keys().cloned().collect();
        keys.sort();
        if let Some(props) = props {
            for (k, s) in props {
                if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if !root.contains_key(k) {
                    if let Some(d) = s.get("default") {
                        root.insert(k.clone(), d.clone());
                    }
                }
            }
        }
        let keys: Vec<String> = root.keys().cloned().collect();
        for k in keys {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.and_then(|p| p.get(&k)) {
                Some(s) => {
                    if let Some(v) = root.get_mut(&k) {
                        if v.is_null()
                            && !s.get("nullable").and_then(Value::as_bool).unwrap_or(false)
                        {
                            root.remove(&k);
                            continue;
                        }
                        walk(v, s, &k, &mut unknown, &mut causes);
                    }
                }
                None if preserves(schema) => {}
                None => {
                    root.remove(&k);
                    unknown.push(k);
                }
            }
        }
        required(root, schema, "", &mut causes);
    }
    Processed {
        object: obj,
        unknown,
        causes,
    }
}

fn preserves(s: &Value) -> bool {
    s.get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn required(m: &Map<String, Value>, s: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(req) = s.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !m.contains_key(r) {
                causes.push(Cause::required(join(path, r)));
            }
        }
    }
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

fn type_ok(want: &str, v: &Value) -> bool {
    match (want, type_name(v)) {
        (w, g) if w == g => true,
        ("number", "integer") => true,
        ("integer", "number") => v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn walk(v: &mut Value, s: &Value, path: &str, unknown: &mut Vec<String>, causes: &mut Vec<Cause>) {
    let int_or_string = s
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if v.is_null() {
        return;
    }
    if int_or_string {
        if !matches!(type_name(v), "integer" | "string") {
            causes.push(Cause::type_invalid(
                path,
                v,
                &format!(
                    "{path} in body must be of type integer,string: {:?}",
                    type_name(v)
                ),
            ));
        }
    } else if let Some(t) = s.get("type").and_then(Value::as_str) {
        if !type_ok(t, v) {
            causes.push(Cause::type_invalid(
                path,
                &Value::String(type_name(v).into()),
                &format!("{path} in body must be of type {t}: {:?}", type_name(v)),
            ));
            return;
        }
    }
    check_value(v, s, path, causes);
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(props) = props {
                for (k, ps) in props {
                    if !m.contains_key(k) {
                        if let Some(d) = ps.get("default") {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                }
            }
            let additional = s.get("additionalProperties");
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let p = join(path, &k);
                let child_schema = props
                    .and_then(|ps| ps.get(&k))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match child_schema {
                    Some(cs) => {
                        let nullable = cs.get("nullable").and_then(Value::as_bool).unwrap_or(false);
                        if m.get(&k).is_some_and(Value::is_null) && !nullable {
                            m.remove(&k);
                            continue;
                        }
                        if let Some(cv) = m.get_mut(&k) {
                            walk(cv, cs, &p, unknown, causes);
                        }
                    }
                    None if preserves(s) || additional == Some(&Value::Bool(true)) => {}
                    None => {
                        m.remove(&k);
                        unknown.push(p);
                    }
                }
            }
            required(m, s, path, causes);
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, is, &format!("{path}[{i}]"), unknown, causes);
                }
            }
        }
        _ => {}
    }
}

fn check_value(v: &Value, s: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            let allowed: Vec<String> = e
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), String::from))
                .collect();
            causes.push(Cause::not_supported(path, v, &allowed));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            let excl = s
                .get("exclusiveMinimum")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if n < min || (excl && n == min) {
                let op = if excl {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                causes.push(Cause::invalid(
                    path,
                    v,
                    &format!("{path} in body should be {op} {}", s["minimum"]),
                ));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            let excl = s
                .get("exclusiveMaximum")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if n > max || (excl && n == max) {
                let op = if excl {
                    "less than"
                } else {
                    "less than or equal to"
                };
                causes.push(Cause::invalid(
                    path,
                    v,
                    &format!("{path} in body should be {op} {}", s["maximum"]),
                ));
            }
        }
    }
    if let Some(st) = v.as_str() {
        let len = st.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
            if len < min {
                causes.push(Cause::invalid(
                    path,
                    v,
                    &format!("{path} in body should be at least {min} chars long"),
                ));
            }
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                causes.push(Cause::new(
                    "FieldValueTooLong",
                    format!("Too long: may not be more than {max} bytes"),
                    path,
                ));
            }
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            if pattern(p).is_some_and(|re| !re.is_match(st)) {
                causes.push(Cause::invalid(
                    path,
                    v,
                    &format!("{path} in body should match '{p}'"),
                ));
            }
        }
    }
    if let Some(a) = v.as_array() {
        let n = a.len() as u64;
        if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
            if n < min {
                causes.push(Cause::invalid(
                    path,
                    &Value::from(n),
                    &format!("{path} in body should have at least {min} items"),
                ));
            }
        }
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
            if n > max {
                causes.push(Cause::new(
                    "FieldValueTooMany",
                    format!("Too many: {n}: must have at most {max} items"),
                    path,
                ));
            }
        }
        list_type(a, s, path, causes);
    }
    if let Some(m) = v.as_object() {
        let n = m.len() as u64;
        if let Some(max) = s.get("maxProperties").and_then(Value::as_u64) {
            if n > max {
                causes.push(Cause::new(
                    "FieldValueTooMany",
                    format!("Too many: {n}: must have at most {max} items"),
                    path,
                ));
            }
        }
    }
}

/// `x-kubernetes-list-type`: a `set` holds no value twice, a `map` no key twice.
fn list_type(items: &[Value], s: &Value, path: &str, causes: &mut Vec<Cause>) {
    let keys: Vec<&str> = s
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let key_of = |v: &Value| -> Value {
        match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => Value::Object(
                keys.iter()
                    .filter_map(|k| v.get(*k).map(|x| (k.to_string(), x.clone())))
                    .collect(),
            ),
            _ => v.clone(),
        }
    };
    if !matches!(
        s.get("x-kubernetes-list-type").and_then(Value::as_str),
        Some("set" | "map")
    ) {
        return;
    }
    let mut seen: Vec<Value> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = key_of(item);
        if seen.contains(&key) {
            causes.push(Cause::duplicate(format!("{path}[{i}]"), &key));
        } else {
            seen.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "minLength": 1},
                "replicas": {"type": "integer", "minimum": 0, "default": 1},
                "tier": {"type": "string", "enum": ["web", "worker"]},
                "port": {"x-kubernetes-int-or-string": true},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "env": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}})
    }

    #[test]
    fn defaults_and_pruning() {
        // Missing fields with defaults are filled; unknown fields are pruned and reported.
        let p = process(
            Some(&schema()),
            json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"image": "i", "bogus": 1, "extra": {"kept": true}, "env": {"A": "b"}}, "top": 1}),
        );
        assert!(p.causes.is_empty(), "{:?}", p.causes);
        assert_eq!(p.object["spec"]["replicas"], 1);
        assert_eq!(p.object["spec"]["extra"]["kept"], true);
        assert_eq!(p.object["spec"]["env"]["A"], "b");
        assert!(p.object.get("top").is_none());
        assert_eq!(p.unknown, vec!["spec.bogus".to_string(), "top".to_string()]);
    }

    #[test]
    fn list_sets_refuse_duplicates() {
        let s =
            json!({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}});
        let mut causes = Vec::new();
        check_value(&json!(["a", "b", "a"]), &s, "spec.l", &mut causes);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.l[2]");
        assert_eq!(causes[0].message, r#"Duplicate value: "a""#);
    }

    #[test]
    fn value_checks_report_fields() {
        // Type, enum, minimum and required violations each produce a cause on their field.
        let p = process(
            Some(&schema()),
            json!({"spec": {"replicas": -1, "tier": "db", "port": true}}),
        );
        let fields: Vec<&str> = p.causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.replicas"));
        assert!(fields.contains(&"spec.tier"));
        assert!(fields.contains(&"spec.port"));
        assert!(fields.contains(&"spec.image"));
        let p = process(
            Some(&schema()),
            json!({"spec": {"image": "i", "replicas": "two"}}),
        );
        assert_eq!(p.causes[0].reason, "FieldValueTypeInvalid");
    }
}
