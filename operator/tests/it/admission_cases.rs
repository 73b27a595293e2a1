//! The agreement table: MicroService specs that probe every bound, pattern, enum and CEL rule
//! of the CRD, each with the verdict the API server, `validate` and `render` must all give.
//! Boundary cases are generated from the generated CRD's own schema, so a new bounded field
//! is covered without editing this file; patterns, rules and types are listed by hand.

use serde_json::{json, Map, Value};

/// Name of every MicroService in the table (rules compare against it).
pub const NAME: &str = "svc";

/// What every judge must say about a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// Refused, with this field path in every judge's error.
    Invalid(&'static str),
    /// Admitted by the API server but refused by the operator, which reports it in status:
    /// checks CEL cannot make within the server's cost budget (map keys, sums).
    OperatorOnly(&'static str),
}

#[derive(Debug, Clone)]
pub struct Case {
    pub what: String,
    pub spec: Value,
    pub verdict: Verdict,
}

/// A spec with every optional object present and valid, so that one change makes one error.
pub fn base() -> Value {
    json!({
        "image": "flotilla/users:0.1.0",
        "autoscaling": {"minReplicas": 1, "maxReplicas": 10000, "targetCPUUtilizationPercentage": 50},
        "failover": {"scrapeMetrics": true},
    })
}

fn set(spec: &mut Value, path: &str, v: Value) {
    let mut cur = spec;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur[*p] = v;
            return;
        }
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
}

fn case(what: impl Into<String>, changes: &[(&str, Value)], verdict: Verdict) -> Case {
    let mut spec = base();
    for (path, v) in changes {
        set(&mut spec, path, v.clone());
    }
    Case {
        what: what.into(),
        spec,
        verdict,
    }
}

/// A string of `n` characters that satisfies the field's pattern.
fn filler(pattern: Option<&str>, n: usize) -> String {
    match pattern {
        Some(p) if p.starts_with("^/") => format!("/{}", "a".repeat(n.saturating_sub(1))),
        _ => "a".repeat(n),
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Boundary cases for every bounded scalar of the spec schema: just outside, on, and just
/// inside each minimum, maximum, minLength and maxLength.
fn boundaries(schema: &Value, path: &str, out: &mut Vec<Case>) {
    let props = schema.get("properties").and_then(Value::as_object);
    for (k, s) in props.into_iter().flat_map(Map::iter) {
        let p = format!("{path}.{k}");
        let field = leak(format!("spec.{p}").replace("spec..", "spec."));
        let at = p.trim_start_matches('.');
        match s.get("type").and_then(Value::as_str) {
            Some("object") => boundaries(s, &p, out),
            Some("integer") => {
                if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                    let min = min as i64;
                    out.push(case(
                        format!("{at} = minimum"),
                        &[(at, json!(min))],
                        Verdict::Valid,
                    ));
                    out.push(case(
                        format!("{at} below minimum"),
                        &[(at, json!(min - 1))],
                        Verdict::Invalid(field),
                    ));
                }
                if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                    let max = max as i64;
                    out.push(case(
                        format!("{at} = maximum"),
                        &[(at, json!(max))],
                        Verdict::Valid,
                    ));
                    out.push(case(
                        format!("{at} above maximum"),
                        &[(at, json!(max + 1))],
                        Verdict::Invalid(field),
                    ));
                }
            }
            Some("number") => {
                if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                    out.push(case(
                        format!("{at} = minimum"),
                        &[(at, json!(min))],
                        Verdict::Valid,
                    ));
                    out.push(case(
                        format!("{at} below minimum"),
                        &[(at, json!(min - 0.01))],
                        Verdict::Invalid(field),
                    ));
                }
                if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                    out.push(case(
                        format!("{at} = maximum"),
                        &[(at, json!(max))],
                        Verdict::Valid,
                    ));
                    out.push(case(
                        format!("{at} above maximum"),
                        &[(at, json!(max + 0.01))],
                        Verdict::Invalid(field),
                    ));
                }
            }
            Some("string") => {
                let pattern = s.get("pattern").and_then(Value::as_str);
                if let Some(min) = s
                    .get("minLength")
                    .and_then(Value::as_u64)
                    .filter(|m| *m > 0)
                {
                    let min = min as usize;
                    out.push(case(
                        format!("{at} length = minLength"),
                        &[(at, json!(filler(pattern, min)))],
                        Verdict::Valid,
                    ));
                    let short = if pattern.is_some_and(|p| p.starts_with("^/")) && min == 1 {
                        String::new()
                    } else {
                        filler(pattern, min - 1)
                    };
                    out.push(case(
                        format!("{at} shorter than minLength"),
                        &[(at, json!(short))],
                        Verdict::Invalid(field),
                    ));
                }
                if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
                    let max = max as usize;
                    out.push(case(
                        format!("{at} length = maxLength"),
                        &[(at, json!(filler(pattern, max)))],
                        Verdict::Valid,
                    ));
                    out.push(case(
                        format!("{at} longer than maxLength"),
                        &[(at, json!(filler(pattern, max + 1)))],
                        Verdict::Invalid(field),
                    ));
                }
            }
            _ => {}
        }
    }
}

fn names(n: usize) -> Value {
    json!((0..n).map(|i| format!("dep-{i}")).collect::<Vec<_>>())
}

/// Patterns, enums, types, list rules, every CEL rule, unknown fields and operator-only checks.
fn listed() -> Vec<Case> {
    use Verdict::{Invalid, OperatorOnly, Valid};
    vec![
        case("the base spec", &[], Valid),
        case(
            "image with a space",
            &[("image", json!("users 1"))],
            Invalid("spec.image"),
        ),
        case(
            "image with a tab",
            &[("image", json!("\tusers"))],
            Invalid("spec.image"),
        ),
        case(
            "portName upper case",
            &[("portName", json!("HTTP"))],
            Invalid("spec.portName"),
        ),
        case(
            "portName digits only",
            &[("portName", json!("8080"))],
            Invalid("spec.portName"),
        ),
        case(
            "portName with --",
            &[("portName", json!("a--b"))],
            Invalid("spec.portName"),
        ),
        case(
            "portName ending in -",
            &[("portName", json!("http-"))],
            Invalid("spec.portName"),
        ),
        case(
            "portName with a digit",
            &[("portName", json!("h2c"))],
            Valid,
        ),
        case(
            "configMountPath relative",
            &[("configMountPath", json!("etc/app"))],
            Invalid("spec.configMountPath"),
        ),
        case(
            "readinessPath relative",
            &[("health.readinessPath", json!("ready"))],
            Invalid("spec.health.readinessPath"),
        ),
        case(
            "partOf with a space",
            &[("partOf", json!("my shop"))],
            Invalid("spec.partOf"),
        ),
        case(
            "partOf starting with .",
            &[("partOf", json!(".shop"))],
            Invalid("spec.partOf"),
        ),
        case("partOf dotted", &[("partOf", json!("shop.v1"))], Valid),
        case(
            "serviceAccountName upper case",
            &[("serviceAccountName", json!("Robot"))],
            Invalid("spec.serviceAccountName"),
        ),
        case(
            "serviceAccountName dotted",
            &[("serviceAccountName", json!("robot.v1"))],
            Valid,
        ),
        case(
            "fallback upper case",
            &[("failover.fallback", json!("Users"))],
            Invalid("spec.failover.fallback"),
        ),
        case(
            "fallback starting with a digit",
            &[("failover.fallback", json!("1users"))],
            Invalid("spec.failover.fallback"),
        ),
        case(
            "dependency with _",
            &[("dependencies", json!(["a_b"]))],
            Invalid("spec.dependencies[0]"),
        ),
        case(
            "dependency empty",
            &[("dependencies", json!([""]))],
            Invalid("spec.dependencies[0]"),
        ),
        case(
            "dependency of 64 characters",
            &[("dependencies", json!(["a".repeat(64)]))],
            Invalid("spec.dependencies[0]"),
        ),
        case(
            "dependencies duplicated",
            &[("dependencies", json!(["users", "users"]))],
            Invalid("spec.dependencies[1]"),
        ),
        case("64 dependencies", &[("dependencies", names(64))], Valid),
        case(
            "65 dependencies",
            &[("dependencies", names(65))],
            Invalid("spec.dependencies"),
        ),
        case(
            "env names duplicated",
            &[(
                "env",
                json!([{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
            )],
            Invalid("spec.env[1]"),
        ),
        case(
            "env value not a string",
            &[("env", json!([{"name": "A", "value": 1}]))],
            Invalid("spec.env[0].value"),
        ),
        case(
            "env without a name",
            &[("env", json!([{"value": "1"}]))],
            Invalid("spec.env[0].name"),
        ),
        case(
            "service type NodePort",
            &[("service.type", json!("NodePort"))],
            Valid,
        ),
        case(
            "service type unknown",
            &[("service.type", json!("Ingress"))],
            Invalid("spec.service.type"),
        ),
        case(
            "failover mode Observe",
            &[("failover.mode", json!("Observe"))],
            Valid,
        ),
        case(
            "failover mode unknown",
            &[("failover.mode", json!("Panic"))],
            Invalid("spec.failover.mode"),
        ),
        case(
            "replicas a string",
            &[("replicas", json!("three"))],
            Invalid("spec.replicas"),
        ),
        case(
            "replicas a fraction",
            &[("replicas", json!(1.5))],
            Invalid("spec.replicas"),
        ),
        case(
            "failover.enabled a string",
            &[("failover.enabled", json!("yes"))],
            Invalid("spec.failover.enabled"),
        ),
        case(
            "config value a number",
            &[("config", json!({"A": 1}))],
            Invalid("spec.config[A]"),
        ),
        case(
            "unknown spec field",
            &[("replica", json!(2))],
            Invalid("spec.replica"),
        ),
        case(
            "unknown nested field",
            &[("health.periodMilis", json!(500))],
            Invalid("spec.health.periodMilis"),
        ),
        // CEL rules, each failing and passing.
        case(
            "minReplicas > maxReplicas",
            &[
                ("autoscaling.minReplicas", json!(5)),
                ("autoscaling.maxReplicas", json!(4)),
            ],
            Invalid("spec.autoscaling"),
        ),
        case(
            "minReplicas = maxReplicas",
            &[
                ("autoscaling.minReplicas", json!(4)),
                ("autoscaling.maxReplicas", json!(4)),
            ],
            Valid,
        ),
        case(
            "autoscaling without a target",
            &[("autoscaling", json!({"maxReplicas": 3}))],
            Invalid("spec.autoscaling"),
        ),
        case(
            "autoscaling on memory only",
            &[(
                "autoscaling",
                json!({"maxReplicas": 3, "targetMemoryUtilizationPercentage": 70}),
            )],
            Valid,
        ),
        case(
            "failover enabled without fallback",
            &[("failover.enabled", json!(true))],
            Invalid("spec.failover"),
        ),
        case(
            "failover enabled with fallback",
            &[
                ("failover.enabled", json!(true)),
                ("failover.fallback", json!("backup")),
            ],
            Valid,
        ),
        case(
            "maxErrorRate without scrapeMetrics",
            &[("failover", json!({"maxErrorRate": 0.5}))],
            Invalid("spec.failover"),
        ),
        case(
            "maxErrorRate with scrapeMetrics",
            &[(
                "failover",
                json!({"maxErrorRate": 0.5, "scrapeMetrics": true}),
            )],
            Valid,
        ),
        case(
            "fallback is itself",
            &[("failover.fallback", json!(NAME))],
            Invalid("spec.failover.fallback"),
        ),
        case(
            "depends on itself",
            &[("dependencies", json!(["users", NAME]))],
            Invalid("spec.dependencies"),
        ),
        case(
            "canaryReplicas and canaryPercent",
            &[
                ("rollout.canaryReplicas", json!(1)),
                ("rollout.canaryPercent", json!(10)),
            ],
            Invalid("spec.rollout"),
        ),
        case(
            "canaryPercent alone",
            &[("rollout.canaryPercent", json!(10))],
            Valid,
        ),
        // What CEL cannot check within the server's cost budget: the operator reports it.
        case(
            "config key with a space",
            &[("config", json!({"bad key": "v"}))],
            OperatorOnly("spec.config[bad key]"),
        ),
        case(
            "config key ..",
            &[("config", json!({"..": "v"}))],
            OperatorOnly("spec.config[..]"),
        ),
        case(
            "config key dotted",
            &[("config", json!({"app.yaml": "v"}))],
            Valid,
        ),
        case(
            "config over 1 MB in two values",
            &[(
                "config",
                json!({"A": "x".repeat(600_000), "B": "x".repeat(600_000)}),
            )],
            OperatorOnly("spec.config"),
        ),
        case(
            "env name empty",
            &[("env", json!([{"name": "", "value": "1"}]))],
            OperatorOnly("spec.env[0].name"),
        ),
        case(
            "reserved pod annotation",
            &[("podAnnotations", json!({"flotilla.rs/config-hash": "x"}))],
            OperatorOnly("spec.podAnnotations[flotilla.rs/config-hash]"),
        ),
        case(
            "pod annotation of a mesh",
            &[("podAnnotations", json!({"linkerd.io/inject": "enabled"}))],
            Valid,
        ),
    ]
}

fn strings(n: usize, len: usize) -> Value {
    json!(vec!["a".repeat(len); n])
}

fn env_vars(n: usize) -> Value {
    json!((0..n)
        .map(|i| json!({"name": format!("E{i}"), "value": "1"}))
        .collect::<Vec<_>>())
}

fn config_keys(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("K{i}"), json!("v"))).collect())
}

/// The size bounds that keep one MicroService from growing the operator's caches: item and
/// entry counts and value lengths of `command`, `args`, `env` and `config`, each on and just
/// over the bound.
fn size_bounds() -> Vec<Case> {
    use Verdict::{Invalid, Valid};
    vec![
        case("32 command items", &[("command", strings(32, 1))], Valid),
        case(
            "33 command items",
            &[("command", strings(33, 1))],
            Invalid("spec.command"),
        ),
        case(
            "command item of 32768 characters",
            &[("command", strings(1, 32768))],
            Valid,
        ),
        case(
            "command item of 32769 characters",
            &[("command", strings(1, 32769))],
            Invalid("spec.command[0]"),
        ),
        case("256 args", &[("args", strings(256, 1))], Valid),
        case(
            "257 args",
            &[("args", strings(257, 1))],
            Invalid("spec.args"),
        ),
        case(
            "arg of 32768 characters",
            &[("args", strings(1, 32768))],
            Valid,
        ),
        case(
            "arg of 32769 characters",
            &[("args", strings(1, 32769))],
            Invalid("spec.args[0]"),
        ),
        case("256 env entries", &[("env", env_vars(256))], Valid),
        case(
            "257 env entries",
            &[("env", env_vars(257))],
            Invalid("spec.env"),
        ),
        case(
            "env value of 32768 characters",
            &[("env", json!([{"name": "A", "value": "x".repeat(32768)}]))],
            Valid,
        ),
        case(
            "env value of 32769 characters",
            &[("env", json!([{"name": "A", "value": "x".repeat(32769)}]))],
            Invalid("spec.env[0].value"),
        ),
        case("256 config keys", &[("config", config_keys(256))], Valid),
        case(
            "257 config keys",
            &[("config", config_keys(257))],
            Invalid("spec.config"),
        ),
        // On the value bound, the key makes it one byte over the 1 MB total.
        case(
            "config value of 1000000 characters",
            &[("config", json!({"A": "x".repeat(1_000_000)}))],
            Verdict::OperatorOnly("spec.config"),
        ),
        case(
            "config value of 1000001 characters",
            &[("config", json!({"A": "x".repeat(1_000_001)}))],
            Invalid("spec.config[A]"),
        ),
    ]
}

/// The whole table: hand-listed cases plus the boundaries of every bounded field.
pub fn table() -> Vec<Case> {
    let crd = serde_json::to_value(flotilla_crds::crd()).unwrap_or_default();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut out = listed();
    out.extend(size_bounds());
    boundaries(spec, "", &mut out);
    out
}
