//! The structural-schema rules a CRD's `openAPIV3Schema` must follow; a violation rejects
//! the CRD with 422 like the real apiextensions server. Pure functions.

use serde_json::Value;

use crate::status::Cause;

/// Checks one version's root schema; `field` is its path in the CRD
/// (`spec.versions[0].schema.openAPIV3Schema`).
pub fn check(schema: &Value, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        causes.push(Cause::new(
            "FieldValueRequired",
            "Required value: must be object at the root",
            format!("{field}.type"),
        ));
    }
    if let Some(meta) = schema.pointer("/properties/metadata") {
        let allowed = meta
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(|p| p.keys().all(|k| k == "name" || k == "generateName"));
        let extra = meta.as_object().is_some_and(|m| {
            m.keys()
                .any(|k| !matches!(k.as_str(), "type" | "properties" | "description"))
        });
        if !allowed || extra {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified",
                format!("{field}.properties[metadata]"),
            ));
        }
    }
    node(schema, field, false, &mut causes);
    causes
}

fn node(s: &Value, field: &str, in_preserved: bool, causes: &mut Vec<Cause>) {
    let int_or_string = s
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let preserve = s
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let type_ = s.get("type").and_then(Value::as_str).unwrap_or("");
    if int_or_string && !type_.is_empty() {
        causes.push(Cause::new(
            "FieldValueForbidden",
            "Forbidden: must be empty if x-kubernetes-int-or-string is true",
            format!("{field}.type"),
        ));
    }
    if type_.is_empty() && !int_or_string && !(preserve || in_preserved) {
        causes.push(Cause::new(
            "FieldValueRequired",
            "Required value: must not be empty for specified object fields",
            format!("{field}.type"),
        ));
    }
    if !type_.is_empty()
        && !matches!(
            type_,
            "object" | "array" | "string" | "integer" | "number" | "boolean"
        )
    {
        causes.push(Cause::not_supported(
            format!("{field}.type"),
            &Value::String(type_.into()),
            &["array", "boolean", "integer", "number", "object", "string"].map(String::from),
        ));
    }
    if type_ == "array" && s.get("items").is_none() {
        causes.push(Cause::required(format!("{field}.items")));
    }
    if s.get("properties").is_some()
        && s.get("additionalProperties")
            .is_some_and(|a| a != &Value::Bool(false))
    {
        causes.push(Cause::new(
            "FieldValueForbidden",
            "Forbidden: additionalProperties and properties are mutual exclusive",
            format!("{field}.additionalProperties"),
        ));
    }
    for forbidden in ["$ref", "uniqueItems"] {
        if s.get(forbidden).is_some() {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "Forbidden: must not be set",
                format!("{field}.{forbidden}"),
            ));
        }
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (k, ps) in props {
            node(
                ps,
                &format!("{field}.properties[{k}]"),
                preserve || in_preserved,
                causes,
            );
        }
    }
    if let Some(items) = s.get("items") {
        if items.is_object() {
            node(
                items,
                &format!("{field}.items"),
                preserve || in_preserved,
                causes,
            );
        }
    }
    if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
        node(
            ap,
            &format!("{field}.additionalProperties"),
            preserve || in_preserved,
            causes,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_type_is_not_structural() {
        // Every field needs a type unless it preserves unknown fields or is int-or-string.
        let s = json!({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "string"}}}}});
        let c = check(&s, "root");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "root.properties[spec].type");
        let ok = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"p": {"x-kubernetes-int-or-string": true}, "x": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        assert!(check(&ok, "root").is_empty());
    }
}
