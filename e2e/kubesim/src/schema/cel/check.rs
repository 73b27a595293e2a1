//! Compile-time checks of a CEL rule against the schema of the value it validates, standing
//! in for cel-go's type checker and cost estimator: undefined fields and undeclared names,
//! operand types of the operators and functions the Kubernetes CEL environment declares, the
//! rule's result type, and an estimate of the worst-case cost from the schema's
//! `maxLength`/`maxItems`/`maxProperties` bounds. Pure functions over the parsed expression.

use cel::common::ast::{Expr, LiteralValue};
use cel::IdedExpr;
use serde_json::{json, Value};

/// Largest request body the API server accepts (3 MiB); it bounds every unbounded size.
pub const MAX_REQUEST_BYTES: u64 = 3 * 1024 * 1024;

/// The static type of an expression, as far as the schema tells.
#[derive(Debug, Clone)]
pub enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    Str { max: u64 },
    Bytes,
    Null,
    List { item: Box<Ty>, max: u64 },
    Map { value: Box<Ty>, max: u64 },
    Object(Value),
    Dyn,
}

impl Ty {
    /// The type CEL gives a value of `schema` (`metadata` of a root object exposes only
    /// `name` and `generateName`, as on a real server).
    pub fn of_schema(schema: &Value, root: bool) -> Ty {
        if schema
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            return Ty::Dyn;
        }
        let max = |k: &str, unit: u64| {
            schema
                .get(k)
                .and_then(Value::as_u64)
                .unwrap_or(MAX_REQUEST_BYTES / unit)
        };
        match schema.get("type").and_then(Value::as_str) {
            Some("boolean") => Ty::Bool,
            Some("integer") => Ty::Int,
            Some("number") => Ty::Double,
            Some("string") => Ty::Str {
                max: max("maxLength", 1),
            },
            Some("array") => Ty::List {
                item: Box::new(
                    schema
                        .get("items")
                        .map_or(Ty::Dyn, |i| Ty::of_schema(i, false)),
                ),
                max: max("maxItems", 2),
            },
            Some("object") if schema.get("properties").is_some() => {
                let mut s = schema.clone();
                if root {
                    s["properties"]["metadata"] = json!({"type": "object", "properties": {
                        "name": {"type": "string", "maxLength": 253},
                        "generateName": {"type": "string", "maxLength": 253}}});
                    s["properties"]["apiVersion"] = json!({"type": "string", "maxLength": 253});
                    s["properties"]["kind"] = json!({"type": "string", "maxLength": 253});
                }
                Ty::Object(s)
            }
            Some("object") => match schema.get("additionalProperties") {
                Some(a) if a.is_object() => Ty::Map {
                    value: Box::new(Ty::of_schema(a, false)),
                    max: max("maxProperties", 4),
                },
                _ => Ty::Dyn,
            },
            _ => Ty::Dyn,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Ty::Bool => "bool".into(),
            Ty::Int => "int".into(),
            Ty::Uint => "uint".into(),
            Ty::Double => "double".into(),
            Ty::Str { .. } => "string".into(),
            Ty::Bytes => "bytes".into(),
            Ty::Null => "null_type".into(),
            Ty::List { item, .. } => format!("list({})", item.name()),
            Ty::Map { value, .. } => format!("map(string, {})", value.name()),
            Ty::Object(_) => "object".into(),
            Ty::Dyn => "dyn".into(),
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Ty::Bool => 1,
            Ty::Int => 2,
            Ty::Uint => 3,
            Ty::Double => 4,
            Ty::Str { .. } => 5,
            Ty::Bytes => 6,
            Ty::Null => 7,
            Ty::List { .. } => 8,
            Ty::Map { .. } | Ty::Object(_) => 9,
            Ty::Dyn => 0,
        }
    }

    fn is(&self, other: &Ty) -> bool {
        matches!(self, Ty::Dyn) || matches!(other, Ty::Dyn) || self.kind() == other.kind()
    }

    /// How many elements (characters, items, entries) a value of this type can hold.
    pub fn size(&self) -> u64 {
        match self {
            Ty::Str { max } | Ty::List { max, .. } | Ty::Map { max, .. } => *max,
            Ty::Object(s) => s
                .get("properties")
                .and_then(Value::as_object)
                .map_or(1, |p| p.len() as u64),
            _ => 1,
        }
    }
}

/// A compile error, located in the rule's source.
#[derive(Debug)]
pub struct CheckError {
    pub id: u64,
    pub message: String,
}

/// What checking found: the result type and the estimated worst-case cost.
pub struct Checked {
    pub ty: Ty,
    pub cost: f64,
}

/// Names in scope: `self`, `oldSelf` and comprehension variables.
pub struct Scope<'a> {
    pub vars: Vec<(String, Ty)>,
    pub parent: Option<&'a Scope<'a>>,
}

impl Scope<'_> {
    fn get(&self, name: &str) -> Option<&Ty> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .or_else(|| self.parent.and_then(|p| p.get(name)))
    }
}

fn err(e: &IdedExpr, message: impl Into<String>) -> CheckError {
    CheckError {
        id: e.id,
        message: message.into(),
    }
}

fn ok(ty: Ty, cost: f64) -> Result<Checked, CheckError> {
    Ok(Checked { ty, cost })
}

fn no_overload(e: &IdedExpr, f: &str, args: &[&Ty]) -> CheckError {
    let names: Vec<String> = args.iter().map(|t| t.name()).collect();
    err(
        e,
        format!(
            "found no matching overload for '{f}' applied to '({})'",
            names.join(", ")
        ),
    )
}

/// Checks `e` in `scope`: every name declared, every field defined, every call typed.
pub fn check(e: &IdedExpr, scope: &Scope) -> Result<Checked, CheckError> {
    match &e.expr {
        Expr::Literal(l) => ok(
            match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::Str { max: 0 },
                LiteralValue::UInt(_) => Ty::Uint,
            },
            0.0,
        ),
        Expr::Ident(name) => match scope.get(name) {
            Some(t) => ok(t.clone(), 1.0),
            None if TYPE_NAMES.contains(&name.as_str()) => ok(Ty::Dyn, 0.0),
            None => Err(err(
                e,
                format!("undeclared reference to '{name}' (in container '')"),
            )),
        },
        Expr::Select(sel) => {
            let operand = check(&sel.operand, scope)?;
            let field_ty = match &operand.ty {
                Ty::Object(s) => match s.pointer(&format!("/properties/{}", sel.field)) {
                    Some(fs) => Ty::of_schema(fs, false),
                    None => return Err(err(e, format!("undefined field '{}'", sel.field))),
                },
                Ty::Map { value, .. } => (**value).clone(),
                Ty::Dyn => Ty::Dyn,
                other => {
                    return Err(err(
                        e,
                        format!("type '{}' does not support field selection", other.name()),
                    ))
                }
            };
            ok(
                if sel.test { Ty::Bool } else { field_ty },
                operand.cost + 1.0,
            )
        }
        Expr::Call(call) => check_call(e, call, scope),
        Expr::Comprehension(c) => {
            let range = check(&c.iter_range, scope)?;
            let (iter_ty, n) = match &range.ty {
                Ty::List { item, max } => ((**item).clone(), *max),
                Ty::Map { max, .. } => (Ty::Str { max: 253 }, *max),
                Ty::Dyn => (Ty::Dyn, MAX_REQUEST_BYTES / 2),
                other => {
                    return Err(err(
                        &c.iter_range,
                        format!("expression of type '{}' cannot be range of a comprehension (must be list, map, or dynamic)", other.name()),
                    ))
                }
            };
            let init = check(&c.accu_init, scope)?;
            let mut vars = vec![(c.iter_var.clone(), iter_ty), (c.accu_var.clone(), init.ty)];
            if let Some(v2) = &c.iter_var2 {
                vars.push((v2.clone(), Ty::Dyn));
            }
            let inner = Scope {
                vars,
                parent: Some(scope),
            };
            let cond = check(&c.loop_cond, &inner)?;
            let step = check(&c.loop_step, &inner)?;
            let result = check(&c.result, &inner)?;
            ok(
                result.ty,
                range.cost + init.cost + result.cost + n as f64 * (cond.cost + step.cost + 1.0),
            )
        }
        Expr::List(l) => {
            let mut cost = 1.0;
            let mut item = Ty::Dyn;
            for (i, el) in l.elements.iter().enumerate() {
                let c = check(el, scope)?;
                cost += c.cost;
                if i == 0 {
                    item = c.ty;
                }
            }
            let max = l.elements.len() as u64;
            ok(
                Ty::List {
                    item: Box::new(item),
                    max,
                },
                cost,
            )
        }
        Expr::Map(m) => ok(
            Ty::Map {
                value: Box::new(Ty::Dyn),
                max: m.entries.len() as u64,
            },
            1.0,
        ),
        Expr::Struct(s) => Err(err(
            e,
            format!(
                "undeclared reference to '{}' (in container '')",
                s.type_name
            ),
        )),
        Expr::Unspecified => Err(err(e, "unspecified expression")),
    }
}

const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

fn traverse(t: &Ty) -> f64 {
    (t.size() as f64 * 0.1).ceil()
}

fn check_call(
    e: &IdedExpr,
    call: &cel::common::ast::CallExpr,
    scope: &Scope,
) -> Result<Checked, CheckError> {
    let target = match &call.target {
        Some(t) => Some(check(t, scope)?),
        None => None,
    };
    let mut args = Vec::with_capacity(call.args.len());
    for a in &call.args {
        args.push(check(a, scope)?);
    }
    let cost: f64 =
        target.as_ref().map_or(0.0, |t| t.cost) + args.iter().map(|a| a.cost).sum::<f64>();
    let f = call.func_name.as_str();
    let tys: Vec<&Ty> = target.iter().chain(args.iter()).map(|c| &c.ty).collect();
    let all = |want: &Ty| tys.iter().all(|t| t.is(want));
    let same = || {
        tys.windows(2)
            .all(|w| w[0].is(w[1]) || matches!(w[1], Ty::Null) || matches!(w[0], Ty::Null))
    };
    let string = Ty::Str { max: 0 };
    let (ty, extra) = match f {
        "_&&_" | "_||_" | "!_" | "@not_strictly_false" => {
            if !all(&Ty::Bool) {
                return Err(no_overload(e, f, &tys));
            }
            (Ty::Bool, 1.0)
        }
        "_==_" | "_!=_" => {
            if !same() {
                return Err(no_overload(e, f, &tys));
            }
            (Ty::Bool, tys.first().map_or(1.0, |t| traverse(t).max(1.0)))
        }
        "_<_" | "_<=_" | "_>_" | "_>=_" => {
            if !same()
                || tys.iter().any(|t| {
                    matches!(
                        t,
                        Ty::List { .. } | Ty::Map { .. } | Ty::Object(_) | Ty::Null
                    )
                })
            {
                return Err(no_overload(e, f, &tys));
            }
            (Ty::Bool, 1.0)
        }
        "_+_" | "_-_" | "_*_" | "_/_" | "_%_" | "-_" => {
            if !same()
                || tys
                    .iter()
                    .any(|t| matches!(t, Ty::Bool | Ty::Null | Ty::Map { .. } | Ty::Object(_)))
            {
                return Err(no_overload(e, f, &tys));
            }
            let t = tys
                .iter()
                .find(|t| !matches!(t, Ty::Dyn))
                .map_or(Ty::Dyn, |t| (*t).clone());
            (t, 1.0)
        }
        "_?_:_" => {
            if !tys.first().is_some_and(|t| t.is(&Ty::Bool)) {
                return Err(no_overload(e, f, &tys));
            }
            let t = match (tys.get(1), tys.get(2)) {
                (Some(a), Some(b)) if a.kind() == b.kind() => (*a).clone(),
                _ => Ty::Dyn,
            };
            (t, 1.0)
        }
        "_[_]" => {
            let t = match tys.first() {
                Some(Ty::List { item, .. }) => (**item).clone(),
                Some(Ty::Map { value, .. }) => (**value).clone(),
                Some(Ty::Dyn | Ty::Object(_)) => Ty::Dyn,
                _ => return Err(no_overload(e, f, &tys)),
            };
            (t, 1.0)
        }
        "@in" => {
            let c = match tys.get(1) {
                Some(c @ (Ty::List { .. } | Ty::Map { .. } | Ty::Dyn)) => c.size() as f64,
                _ => return Err(no_overload(e, f, &tys)),
            };
            (Ty::Bool, c)
        }
        "size" => {
            if !tys.iter().all(|t| {
                matches!(
                    t,
                    Ty::Str { .. }
                        | Ty::Bytes
                        | Ty::List { .. }
                        | Ty::Map { .. }
                        | Ty::Object(_)
                        | Ty::Dyn
                )
            }) {
                return Err(no_overload(e, f, &tys));
            }
            (Ty::Int, 1.0)
        }
        "matches" | "contains" | "startsWith" | "endsWith" => {
            if !all(&string) {
                return Err(no_overload(e, f, &tys));
            }
            let text = tys.first().map_or(1.0, |t| traverse(t));
            let pattern = tys
                .get(1)
                .map_or(1.0, |t| (t.size() as f64 * 0.25).ceil().max(1.0));
            let c = if f == "matches" { text * pattern } else { text };
            (Ty::Bool, c.max(1.0))
        }
        "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" | "charAt" => {
            if !tys.first().is_some_and(|t| t.is(&string)) {
                return Err(no_overload(e, f, &tys));
            }
            let t = tys.first().map_or(string.clone(), |t| (*t).clone());
            (t.clone(), traverse(&t).max(1.0))
        }
        "indexOf" | "lastIndexOf" => (Ty::Int, tys.first().map_or(1.0, |t| traverse(t)).max(1.0)),
        "split" => {
            let s = tys.first().map_or(1, |t| t.size());
            (
                Ty::List {
                    item: Box::new(Ty::Str { max: s }),
                    max: s,
                },
                s as f64,
            )
        }
        "join" => {
            if !tys
                .first()
                .is_some_and(|t| matches!(t, Ty::List { .. } | Ty::Dyn))
            {
                return Err(no_overload(e, f, &tys));
            }
            (
                Ty::Str {
                    max: MAX_REQUEST_BYTES,
                },
                tys.first().map_or(1.0, |t| t.size() as f64),
            )
        }
        "isSorted" => (Ty::Bool, tys.first().map_or(1.0, |t| t.size() as f64)),
        "sum" | "min" | "max" => {
            let t = match tys.first() {
                Some(Ty::List { item, .. }) => (**item).clone(),
                _ => Ty::Dyn,
            };
            (t, tys.first().map_or(1.0, |t| t.size() as f64))
        }
        "int" => (Ty::Int, 1.0),
        "uint" => (Ty::Uint, 1.0),
        "double" => (Ty::Double, 1.0),
        "string" => (
            Ty::Str {
                max: MAX_REQUEST_BYTES,
            },
            1.0,
        ),
        "bool" => (Ty::Bool, 1.0),
        "bytes" => (Ty::Bytes, 1.0),
        "dyn" | "type" => (Ty::Dyn, 1.0),
        _ => {
            return Err(err(
                e,
                format!("undeclared reference to '{f}' (in container '')"),
            ))
        }
    };
    ok(ty, cost + extra)
}
