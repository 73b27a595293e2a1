//! Rules compile, check and evaluate as on a real API server.

use serde_json::{json, Value};

use super::*;

fn schema() -> Value {
    json!({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "min": {"type": "integer"}, "max": {"type": "integer"},
            "rate": {"type": "number"},
            "name": {"type": "string", "maxLength": 20},
            "tags": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 10}},
            "immutable": {"type": "string", "maxLength": 10,
                "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "is immutable"}]}
        }, "x-kubernetes-validations": [
            {"rule": "!has(self.min) || self.min <= self.max", "message": "min must be <= max"},
            {"rule": "!has(self.rate) || self.rate <= 1.0", "messageExpression": "'rate ' + string(self.rate) + ' is above 1'"},
            {"rule": "!has(self.tags) || self.tags.all(t, t.lowerAscii() == t)", "reason": "FieldValueForbidden", "fieldPath": ".tags", "message": "tags must be lower case"},
            {"rule": "!has(self.name) || !self.name.startsWith('x')"}
        ]}
    }, "x-kubernetes-validations": [{"rule": "self.metadata.name.size() <= 5", "message": "name too long"}]})
}

fn errors(new: Value, old: Option<Value>) -> Vec<String> {
    let (node, causes) = compile(&schema(), "s");
    assert!(causes.is_empty(), "{causes:?}");
    let mut out = Vec::new();
    validate(&node, &new, old.as_ref(), "", &mut out);
    out.iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect()
}

fn obj(spec: Value) -> Value {
    json!({"metadata": {"name": "ok", "uid": "u"}, "spec": spec})
}

fn compile_errors(rule: &str, prop: Value) -> Vec<String> {
    let s = json!({"type": "object", "properties": {"v": prop},
        "x-kubernetes-validations": [{"rule": rule}]});
    compile(&s, "root")
        .1
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect()
}

/// Passing objects give no causes; each failing rule gives one cause at its field, with its
/// message, messageExpression, reason and fieldPath.
#[test]
fn rules_report_field_causes() {
    assert_eq!(
        errors(
            obj(json!({"min": 1, "max": 2, "rate": 1, "tags": ["a"]})),
            None
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        errors(obj(json!({"min": 3, "max": 2})), None),
        vec![r#"spec: Invalid value: "object": min must be <= max"#]
    );
    assert_eq!(
        errors(obj(json!({"rate": 1.5})), None),
        vec![r#"spec: Invalid value: "object": rate 1.5 is above 1"#]
    );
    assert_eq!(
        errors(obj(json!({"tags": ["A"]})), None),
        vec!["spec.tags: Forbidden: tags must be lower case"]
    );
    assert_eq!(
        errors(obj(json!({"name": "xy"})), None),
        vec![
            r#"spec: Invalid value: "object": failed rule: !has(self.name) || !self.name.startsWith('x')"#
        ]
    );
    let long = json!({"metadata": {"name": "toolong"}, "spec": {}});
    assert_eq!(
        errors(long, None),
        vec![r#"<nil>: Invalid value: "object": name too long"#]
    );
}

/// Transition rules run only on update; unchanged values that fail a rule are ratcheted.
#[test]
fn transition_rules_and_ratcheting() {
    let a = obj(json!({"immutable": "a"}));
    let b = obj(json!({"immutable": "b"}));
    assert!(errors(b.clone(), None).is_empty());
    assert_eq!(
        errors(b, Some(a.clone())),
        vec![r#"spec.immutable: Invalid value: "string": is immutable"#]
    );
    let bad = obj(json!({"min": 3, "max": 2}));
    assert!(errors(bad.clone(), Some(bad.clone())).is_empty());
    assert_eq!(errors(bad, Some(a)).len(), 1);
}

/// A missing field read without has() is an evaluation error, reported on the field.
#[test]
fn evaluation_errors_are_reported() {
    let s = json!({"type": "object", "properties": {"a": {"type": "integer"}},
        "x-kubernetes-validations": [{"rule": "self.a > 0"}]});
    let (node, causes) = compile(&s, "x");
    assert!(causes.is_empty(), "{causes:?}");
    let mut out = Vec::new();
    validate(&node, &json!({"metadata": {}}), None, "", &mut out);
    assert_eq!(out.len(), 1);
    assert!(
        out[0].message.contains("evaluating rule: self.a > 0"),
        "{}",
        out[0].message
    );
}

/// Rules that a real server refuses to compile are refused with the field of the rule.
#[test]
fn bad_rules_do_not_compile() {
    let int = json!({"type": "integer"});
    let str_ = json!({"type": "string", "maxLength": 10});
    let first = |v: Vec<String>| v.first().cloned().unwrap_or_default();
    assert!(first(compile_errors("self.w > 0", int.clone())).contains("undefined field 'w'"));
    assert!(first(compile_errors("self.v > 0 &&", int.clone())).contains("compilation failed"));
    assert!(first(compile_errors("self.v", int.clone())).contains("must evaluate to a bool"));
    assert!(first(compile_errors("self.v.matches('a')", int.clone()))
        .contains("no matching overload for 'matches'"));
    assert!(first(compile_errors("self.v > 1.5", int.clone()))
        .contains("no matching overload for '_>_'"));
    assert!(first(compile_errors("frobnicate(self.v)", int.clone()))
        .contains("undeclared reference to 'frobnicate'"));
    assert!(
        first(compile_errors("other > 0", int.clone())).contains("undeclared reference to 'other'")
    );
    assert!(compile_errors("self.v.matches('^a') && self.v.lowerAscii() == 'a'", str_).is_empty());
    assert!(compile_errors("has(self.v) && self.v >= 0", int).is_empty());
    let e = first(compile_errors("self.w > 0", json!({"type": "integer"})));
    assert!(
        e.starts_with(
            "root.x-kubernetes-validations[0].rule: Invalid value: apiextensions.ValidationRule{"
        ),
        "{e}"
    );
}

/// Rules over unbounded lists of unbounded strings exceed the cost budget; bounds fix it.
#[test]
fn cost_needs_bounds() {
    let unbounded = json!({"type": "array", "items": {"type": "string"}});
    let e = compile_errors("self.v.all(x, x.matches('^[a-z]+$'))", unbounded);
    assert!(
        e.first()
            .is_some_and(|m| m.contains("estimated rule cost exceeds budget")),
        "{e:?}"
    );
    let bounded =
        json!({"type": "array", "maxItems": 100, "items": {"type": "string", "maxLength": 63}});
    assert!(compile_errors("self.v.all(x, x.matches('^[a-z]+$'))", bounded).is_empty());
}

/// oldSelf is refused below a list that cannot correlate old and new items.
#[test]
fn transition_rules_need_correlation() {
    let s = json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": 5,
        "items": {"type": "string", "maxLength": 5, "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}}}});
    let causes = compile(&s, "r").1;
    assert!(
        causes
            .first()
            .is_some_and(|c| c.message.contains("uncorrelatable")),
        "{causes:?}"
    );
}
