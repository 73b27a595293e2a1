//! CEL validation rules (`x-kubernetes-validations`) of a CRD's structural schema, run as the
//! API server runs them. [`compile`] is the CRD-write side: every rule and messageExpression
//! is parsed, checked against the schema ([`check`]) and its cost estimated, and a rule that
//! fails is reported as a cause on the CRD. [`validate`] is the custom-resource-write side:
//! each rule is evaluated with `self` (and `oldSelf` for transition rules) bound to the value
//! at its schema node, unchanged values are ratcheted, and failures become field causes with
//! the rule's message, messageExpression, reason and fieldPath. Pure functions; no store.

mod check;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use cel::{Context, Env, Program};
use serde_json::{json, Value};

use self::check::{Scope, Ty};
use crate::status::Cause;

/// Per-rule cost limit of the API server (cel-go cost units).
const PER_RULE_COST_LIMIT: f64 = 1_000_000.0;
/// Limit of the summed estimated cost of every rule of one schema.
const SCHEMA_COST_LIMIT: f64 = 100_000_000.0;
/// The reasons a rule may declare.
const REASONS: &[&str] = &[
    "FieldValueInvalid",
    "FieldValueForbidden",
    "FieldValueRequired",
    "FieldValueDuplicate",
];

/// The Kubernetes CEL environment kubesim offers: the standard library, its macros and the
/// strings extension (`lowerAscii`, `split`, `join`, …).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // Registering the extension fails only on a name clash with the standard library.
    let _ = env.add_extension(cel::extensions::strings);
    Arc::new(env)
});

/// One compiled rule.
struct Rule {
    source: String,
    program: Program,
    message: Option<String>,
    message_expression: Option<Program>,
    reason: Option<String>,
    field_path: Option<String>,
    transition: bool,
}

/// The compiled rules of a schema, in the schema's shape.
#[derive(Default)]
pub struct Node {
    type_name: String,
    rules: Vec<Rule>,
    props: BTreeMap<String, Node>,
    items: Option<Box<Node>>,
    additional: Option<Box<Node>>,
    /// `x-kubernetes-list-map-keys` of a `listType: map` list: items correlate by these keys.
    map_keys: Option<Vec<String>>,
    /// Whether this node or any below it has rules (so evaluation can skip the rest).
    active: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("type_name", &self.type_name)
            .field("rules", &self.rules.len())
            .field("props", &self.props)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Whether the schema has any rule at all.
    pub fn has_rules(&self) -> bool {
        self.active
    }
}

/// Compiles every rule of a version's `openAPIV3Schema`; `field` is the schema's path in the
/// CRD (`spec.versions[0].schema.openAPIV3Schema`). Rules that do not compile, type-check or
/// fit the cost budget are returned as causes, as a real server refuses the CRD.
pub fn compile(schema: &Value, field: &str) -> (Node, Vec<Cause>) {
    let mut c = Compiler::default();
    let node = c.node(schema, field, true, true, 1.0);
    if c.total_cost > SCHEMA_COST_LIMIT {
        c.causes.push(Cause::new(
            "FieldValueForbidden",
            format!("Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of {:.1}x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)", c.total_cost / SCHEMA_COST_LIMIT),
            field,
        ));
    }
    (node, c.causes)
}

/// The compiled rules of `schema` (a CRD version's schema is compiled once, when the CRD is
/// stored).
pub fn rules_for(schema: &Value) -> Arc<Node> {
    Arc::new(compile(schema, "").0)
}

#[derive(Default)]
struct Compiler {
    causes: Vec<Cause>,
    total_cost: f64,
}

impl Compiler {
    fn node(&mut self, s: &Value, field: &str, root: bool, correlatable: bool, card: f64) -> Node {
        let mut node = Node {
            type_name: s
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            ..Node::default()
        };
        if let Some(rules) = s.get("x-kubernetes-validations").and_then(Value::as_array) {
            for (i, r) in rules.iter().enumerate() {
                let at = format!("{field}.x-kubernetes-validations[{i}]");
                if let Some(rule) = self.rule(s, r, &at, root, correlatable, card) {
                    node.rules.push(rule);
                }
            }
        }
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (k, ps) in props {
                let child = self.node(
                    ps,
                    &format!("{field}.properties[{k}]"),
                    false,
                    correlatable,
                    card,
                );
                node.props.insert(k.clone(), child);
            }
        }
        if let Some(items) = s.get("items").filter(|i| i.is_object()) {
            let is_map = s.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map");
            node.map_keys = is_map.then(|| {
                s.get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default()
            });
            let n = Ty::of_schema(s, false).size() as f64;
            let child = self.node(
                items,
                &format!("{field}.items"),
                false,
                correlatable && is_map,
                card * n,
            );
            node.items = Some(Box::new(child));
        }
        if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
            let n = Ty::of_schema(s, false).size() as f64;
            let child = self.node(
                a,
                &format!("{field}.additionalProperties"),
                false,
                correlatable,
                card * n,
            );
            node.additional = Some(Box::new(child));
        }
        node.active = !node.rules.is_empty()
            || node.props.values().any(|n| n.active)
            || node.items.as_ref().is_some_and(|n| n.active)
            || node.additional.as_ref().is_some_and(|n| n.active);
        node
    }

    /// Compiles one rule of the schema node `s`; `at` is the rule's path in the CRD.
    fn rule(
        &mut self,
        s: &Value,
        r: &Value,
        at: &str,
        root: bool,
        correlatable: bool,
        card: f64,
    ) -> Option<Rule> {
        let text = |k: &str| r.get(k).and_then(Value::as_str).map(String::from);
        let source = text("rule").unwrap_or_default();
        let shown = rule_struct(r);
        let ty = Ty::of_schema(s, root);
        let (program, checked) = match compile_expr(&source, &ty) {
            Ok(p) => p,
            Err(detail) => {
                self.causes.push(Cause::new(
                    "FieldValueInvalid",
                    format!("Invalid value: {shown}: compilation failed: {detail}"),
                    format!("{at}.rule"),
                ));
                return None;
            }
        };
        if !matches!(checked.ty, Ty::Bool | Ty::Dyn) {
            self.causes.push(Cause::new("FieldValueInvalid", format!("Invalid value: {shown}: compilation failed: cel expression must evaluate to a bool"), format!("{at}.rule")));
            return None;
        }
        let transition = program.references().has_variable("oldSelf");
        if transition && !correlatable {
            self.causes.push(Cause::invalid(
                format!("{at}.rule"),
                &json!(source),
                &format!(
                    "oldSelf cannot be used on the uncorrelatable portion of the schema within {}",
                    at.rsplit_once(".x-kubernetes-validations")
                        .map_or(at, |(p, _)| p)
                ),
            ));
            return None;
        }
        let cost = checked.cost * card;
        self.total_cost += cost;
        if cost > PER_RULE_COST_LIMIT {
            self.causes.push(Cause::new(
                "FieldValueForbidden",
                format!("Forbidden: estimated rule cost exceeds budget by factor of {:.1}x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)", cost / PER_RULE_COST_LIMIT),
                format!("{at}.rule"),
            ));
            return None;
        }
        let message = text("message");
        if message.as_deref().is_some_and(|m| m.contains('\n')) {
            self.causes.push(Cause::invalid(
                format!("{at}.message"),
                &json!(message),
                "message must not contain line breaks",
            ));
        }
        if source.contains('\n') && message.is_none() {
            self.causes.push(Cause::new(
                "FieldValueRequired",
                "Required value: message must be specified if rule contains line breaks",
                format!("{at}.message"),
            ));
        }
        let message_expression = match text("messageExpression") {
            None => None,
            Some(src) => match compile_expr(&src, &ty) {
                Ok((p, c)) if matches!(c.ty, Ty::Str { .. } | Ty::Dyn) => Some(p),
                Ok(_) => {
                    self.causes.push(Cause::invalid(
                        format!("{at}.messageExpression"),
                        &json!(src),
                        "must evaluate to a string",
                    ));
                    None
                }
                Err(detail) => {
                    self.causes.push(Cause::invalid(
                        format!("{at}.messageExpression"),
                        &json!(src),
                        &format!("messageExpression compilation failed: {detail}"),
                    ));
                    None
                }
            },
        };
        let reason = text("reason");
        if let Some(reason) = reason.as_deref().filter(|r| !REASONS.contains(r)) {
            let allowed: Vec<String> = REASONS.iter().map(|r| r.to_string()).collect();
            self.causes.push(Cause::not_supported(
                format!("{at}.reason"),
                &json!(reason),
                &allowed,
            ));
        }
        let field_path = text("fieldPath");
        if let Some(fp) = &field_path {
            if resolve_field_path(s, fp).is_none() {
                self.causes.push(Cause::invalid(
                    format!("{at}.fieldPath"),
                    &json!(fp),
                    "fieldPath must be a valid path: does not refer to a valid field",
                ));
            }
        }
        Some(Rule {
            source,
            program,
            message,
            message_expression,
            reason,
            field_path,
            transition,
        })
    }
}

/// The rule as the real server shows it in a CRD error (`apiextensions.ValidationRule{…}`).
fn rule_struct(r: &Value) -> String {
    let t = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
    format!(
        "apiextensions.ValidationRule{{Rule:{:?}, Message:{:?}, MessageExpression:{:?}, Reason:{:?}, FieldPath:{:?}}}",
        t("rule"), t("message"), t("messageExpression"), t("reason"), t("fieldPath")
    )
}

/// Parses and checks `source` with `self` and `oldSelf` of type `ty`.
fn compile_expr(source: &str, ty: &Ty) -> Result<(Program, check::Checked), String> {
    let program = ENV.compile(source).map_err(|e| e.to_string())?;
    let scope = Scope {
        vars: vec![("self".into(), ty.clone()), ("oldSelf".into(), ty.clone())],
        parent: None,
    };
    match check::check(program.expression(), &scope) {
        Ok(c) => Ok((program, c)),
        Err(e) => {
            let col = program
                .source_info()
                .offset_for(e.id)
                .map_or(0, |(start, _)| start)
                + 1;
            Err(format!("ERROR: <input>:1:{col}: {}", e.message))
        }
    }
}

/// The sub-schema a rule's `fieldPath` (`.a.b`, `['a.b']`) names, if any.
fn resolve_field_path<'s>(mut s: &'s Value, path: &str) -> Option<&'s Value> {
    for seg in field_path_segments(path)? {
        s = s
            .pointer(&format!("/properties/{seg}"))
            .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))?;
    }
    Some(s)
}

fn field_path_segments(path: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("['") {
            let (seg, tail) = r.split_once("']")?;
            out.push(seg.to_string());
            rest = tail;
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            out.push(r[..end].to_string());
            rest = &r[end..];
        } else {
            return None;
        }
    }
    Some(out)
}

/// Evaluates every rule under `node` against `new` (and, for transition rules and
/// ratcheting, the correlated `old`). `path` is the value's field path (`""` at the root).
pub fn validate(
    node: &Node,
    new: &Value,
    old: Option<&Value>,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    if !node.active {
        return;
    }
    if path.is_empty() {
        // At the root, `self.metadata` holds only `name` and `generateName`.
        let (new, old) = (root_view(new), old.map(root_view));
        for rule in &node.rules {
            evaluate(node, rule, &new, old.as_ref(), path, causes);
        }
        return children(node, &new, old.as_ref(), path, causes);
    }
    for rule in &node.rules {
        evaluate(node, rule, new, old, path, causes);
    }
    children(node, new, old, path, causes);
}

fn root_view(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| k == "name" || k == "generateName");
    }
    v
}

fn children(node: &Node, new: &Value, old: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    match new {
        Value::Object(m) => {
            for (k, v) in m {
                let child = node.props.get(k).or(node.additional.as_deref());
                if let Some(child) = child {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    validate(child, v, old.and_then(|o| o.get(k)), &p, causes);
                }
            }
        }
        Value::Array(items) => {
            let Some(child) = node.items.as_deref() else {
                return;
            };
            for (i, item) in items.iter().enumerate() {
                let prior = node.map_keys.as_ref().and_then(|keys| {
                    old.and_then(Value::as_array)?
                        .iter()
                        .find(|o| keys.iter().all(|k| o.get(k) == item.get(k)))
                });
                validate(child, item, prior, &format!("{path}[{i}]"), causes);
            }
        }
        _ => {}
    }
}

fn evaluate(
    node: &Node,
    rule: &Rule,
    new: &Value,
    old: Option<&Value>,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    // Transition rules need an old value; other rules are ratcheted: an unchanged value that
    // fails a rule is let through, so tightening a rule does not block unrelated updates.
    if (rule.transition && old.is_none()) || (!rule.transition && old == Some(new)) {
        return;
    }
    let mut ctx = Context::with_env(ENV.clone());
    ctx.add_variable_from_value("self", to_cel(new, Some(node)));
    if let (true, Some(o)) = (rule.transition, old) {
        ctx.add_variable_from_value("oldSelf", to_cel(o, Some(node)));
    }
    let field = if path.is_empty() {
        "<nil>".to_string()
    } else {
        path.to_string()
    };
    let type_name = if node.type_name.is_empty() {
        "object"
    } else {
        node.type_name.as_str()
    };
    match rule.program.execute(&ctx) {
        Ok(cel::Value::Bool(true)) => {}
        Ok(cel::Value::Bool(false)) => {
            let field = match &rule.field_path {
                Some(fp) => {
                    let rel = field_path_segments(fp).unwrap_or_default().join(".");
                    if path.is_empty() {
                        rel
                    } else {
                        format!("{path}.{rel}")
                    }
                }
                None => field,
            };
            let detail = rule
                .message_expression
                .as_ref()
                .and_then(|p| match p.execute(&ctx) {
                    Ok(cel::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
                    _ => None,
                })
                .or_else(|| rule.message.as_ref().map(|m| m.trim().to_string()))
                .unwrap_or_else(|| format!("failed rule: {}", rule.source.trim()));
            causes.push(match rule.reason.as_deref() {
                Some("FieldValueForbidden") => {
                    Cause::new("FieldValueForbidden", format!("Forbidden: {detail}"), field)
                }
                Some("FieldValueRequired") => Cause::new(
                    "FieldValueRequired",
                    format!("Required value: {detail}"),
                    field,
                ),
                Some("FieldValueDuplicate") => Cause::duplicate(field, &json!(type_name)),
                _ => Cause::invalid(field, &json!(type_name), &detail),
            });
        }
        Ok(other) => causes.push(Cause::invalid(
            field,
            &json!(type_name),
            &format!(
                "rule did not evaluate to a bool but {other:?}: {}",
                rule.source.trim()
            ),
        )),
        Err(e) => causes.push(Cause::invalid(
            field,
            &json!(type_name),
            &format!("{e} evaluating rule: {}", rule.source.trim()),
        )),
    }
}

/// The CEL value of a JSON value; the schema decides whether a JSON integer is a CEL `double`.
fn to_cel(v: &Value, node: Option<&Node>) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => {
            let double = node.is_some_and(|n| n.type_name == "number");
            match (n.as_i64(), double) {
                (Some(i), false) => cel::Value::Int(i),
                _ => match (n.as_u64(), double) {
                    (Some(u), false) => cel::Value::UInt(u),
                    _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
            }
        }
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => {
            let item = node.and_then(|n| n.items.as_deref());
            cel::Value::List(Arc::new(a.iter().map(|x| to_cel(x, item)).collect()))
        }
        Value::Object(m) => {
            let map: HashMap<cel::objects::Key, cel::Value> = m
                .iter()
                .map(|(k, x)| {
                    let child = node.and_then(|n| n.props.get(k).or(n.additional.as_deref()));
                    (
                        cel::objects::Key::String(Arc::new(k.clone())),
                        to_cel(x, child),
                    )
                })
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests;
