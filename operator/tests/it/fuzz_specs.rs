//! Property tests over arbitrary MicroService specs (extreme numbers, empty and huge strings,
//! unicode, duplicate names and keys): decoding → `validate` → `build` never panics or
//! overflows; a spec `validate` admits builds objects that decode as the Kubernetes types
//! with valid names and labels; every rejection names a field; and `validate` agrees with the
//! API server's admission (kubesim's schema and CEL evaluation, called in-process) on every
//! spec, apart from the documented operator-only checks.
//!
//! `FLOTILLA_FUZZ_CASES` sets the number of cases (default 256, a few seconds); for a long
//! run: `FLOTILLA_FUZZ_CASES=20000 cargo nextest run -p flotilla-operator --test fuzz_specs`.

use std::sync::LazyLock;

use flotilla_crds::MicroService;
use flotilla_operator::build::{build, DesiredResources};
use flotilla_operator::validate::{is_dns_label, is_label_value, validate};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use proptest::prelude::*;
use serde_json::{json, Value};

const NAME: &str = "svc";

static ROOT_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let crd = serde_json::to_value(flotilla_crds::crd()).unwrap_or_default();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
});

fn cases() -> u32 {
    std::env::var("FLOTILLA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn int() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(i64::MIN)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(i32::MIN)),
        Just(json!(i32::MAX)),
        Just(json!(i64::from(i32::MAX) + 1)),
        Just(json!(1.5)),
        Just(json!(1e308)),
        Just(json!("3")),
        (-2i64..70000).prop_map(|n| json!(n)),
        (0i64..20).prop_map(|n| json!(n)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".to_string()),
        Just("a".repeat(5000)),
        Just("ü".repeat(64)),
        Just("日本-サービス".to_string()),
        Just("🚀".to_string()),
        Just("/".to_string()),
        Just("/healthz".to_string()),
        Just("users".to_string()),
        Just(NAME.to_string()),
        Just("a--b".to_string()),
        Just("flotilla.rs/x".to_string()),
        Just("..".to_string()),
        "[a-z]{1,8}".prop_map(|s| s),
        "[ -~]{0,20}".prop_map(|s| s),
        "\\PC{0,12}".prop_map(|s| s),
    ]
}

fn string_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::String),
        int(),
        Just(json!(true)),
        Just(Value::Null)
    ]
}

fn names() -> impl Strategy<Value = Value> {
    prop::collection::vec(prop_oneof![text(), Just("users".to_string())], 0..4)
        .prop_map(|v| json!(v))
}

fn map() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(text(), text(), 0..4).prop_map(|m| json!(m))
}

/// A field of the spec (dotted path) and an arbitrary value for it.
fn field() -> impl Strategy<Value = (&'static str, Value)> {
    prop_oneof![
        string_value().prop_map(|v| ("image", v)),
        int().prop_map(|v| ("replicas", v)),
        int().prop_map(|v| ("port", v)),
        string_value().prop_map(|v| ("portName", v)),
        prop::collection::vec(text(), 0..3).prop_map(|v| ("command", json!(v))),
        prop::collection::vec((text(), string_value()), 0..4).prop_map(|v| {
            let env: Vec<Value> = v
                .into_iter()
                .map(|(n, val)| json!({"name": n, "value": val}))
                .collect();
            ("env", json!(env))
        }),
        map().prop_map(|v| ("config", v)),
        string_value().prop_map(|v| ("configMountPath", v)),
        (
            int(),
            int(),
            prop::option::of(int()),
            prop::option::of(int())
        )
            .prop_map(|(a, b, c, m)| {
                let mut o = json!({"minReplicas": a, "maxReplicas": b});
                if let Some(c) = c {
                    o["targetCPUUtilizationPercentage"] = c;
                }
                if let Some(m) = m {
                    o["targetMemoryUtilizationPercentage"] = m;
                }
                ("autoscaling", o)
            }),
        string_value().prop_map(|v| ("health.livenessPath", v)),
        int().prop_map(|v| ("health.periodMillis", v)),
        int().prop_map(|v| ("health.timeoutMillis", v)),
        int().prop_map(|v| ("health.failureThreshold", v)),
        prop_oneof![
            Just(json!("ClusterIP")),
            Just(json!("NodePort")),
            Just(json!("Ingress"))
        ]
        .prop_map(|v| ("service.type", v)),
        int().prop_map(|v| ("service.port", v)),
        names().prop_map(|v| ("dependencies", v)),
        any::<bool>().prop_map(|v| ("failover.enabled", json!(v))),
        string_value().prop_map(|v| ("failover.fallback", v)),
        int().prop_map(|v| ("failover.minHealthy", v)),
        prop_oneof![
            Just(json!(0.5)),
            Just(json!(-0.1)),
            Just(json!(1)),
            Just(json!(2.5)),
            Just(json!(1e308))
        ]
        .prop_map(|v| ("failover.maxErrorRate", v)),
        any::<bool>().prop_map(|v| ("failover.scrapeMetrics", json!(v))),
        int().prop_map(|v| ("failover.maxEjectionPercent", v)),
        string_value().prop_map(|v| ("partOf", v)),
        string_value().prop_map(|v| ("serviceAccountName", v)),
        map().prop_map(|v| ("nodeSelector", v)),
        map().prop_map(|v| ("podAnnotations", v)),
        int().prop_map(|v| ("rollout.canaryReplicas", v)),
        int().prop_map(|v| ("rollout.canaryPercent", v)),
    ]
}

fn spec() -> impl Strategy<Value = Value> {
    prop::collection::vec(field(), 0..6).prop_map(|fields| {
        let mut spec = json!({"image": "flotilla/users:0.1.0"});
        for (path, v) in fields {
            let mut cur = &mut spec;
            let parts: Vec<&str> = path.split('.').collect();
            for p in &parts[..parts.len() - 1] {
                if !cur.get(*p).is_some_and(Value::is_object) {
                    cur[*p] = json!({});
                }
                cur = &mut cur[*p];
            }
            cur[parts[parts.len() - 1]] = v;
        }
        spec
    })
}

fn object(spec: &Value) -> Value {
    json!({"apiVersion": "flotilla.rs/v1alpha1", "kind": "MicroService",
        "metadata": {"name": NAME, "namespace": "fuzz"}, "spec": spec})
}

/// The API server's admission of `obj`: schema (defaults, pruning, bounds) then CEL rules.
fn server_causes(obj: Value) -> Vec<kubesim::status::Cause> {
    let processed = kubesim::schema::process(Some(&ROOT_SCHEMA), obj);
    let mut causes = processed.causes;
    if !causes.iter().any(|c| c.reason == "FieldValueTypeInvalid") {
        let rules = kubesim::schema::cel::rules_for(&ROOT_SCHEMA);
        kubesim::schema::cel::validate(&rules, &processed.object, None, "", &mut causes);
    }
    causes
}

/// Fields only the operator checks (CEL over map keys and sums exceeds the server's budget).
fn operator_only(field: &str) -> bool {
    field.starts_with("spec.config")
        || field.starts_with("spec.podAnnotations[")
        || (field.starts_with("spec.env[") && field.ends_with("].name"))
}

fn check_built(d: &DesiredResources) -> Result<(), TestCaseError> {
    let DesiredResources {
        deployment,
        service,
        config_map,
        hpa,
    } = d;
    let round = |v: serde_json::Result<Value>| v.map_err(|e| TestCaseError::fail(e.to_string()));
    let dj = round(serde_json::to_value(deployment))?;
    prop_assert!(serde_json::from_value::<Deployment>(dj).is_ok());
    let sj = round(serde_json::to_value(service))?;
    prop_assert!(serde_json::from_value::<Service>(sj).is_ok());
    if let Some(cm) = config_map {
        prop_assert!(serde_json::from_value::<ConfigMap>(round(serde_json::to_value(cm))?).is_ok());
    }
    if let Some(h) = hpa {
        prop_assert!(serde_json::from_value::<HorizontalPodAutoscaler>(round(
            serde_json::to_value(h)
        )?)
        .is_ok());
    }
    let name = deployment.metadata.name.clone().unwrap_or_default();
    prop_assert!(is_dns_label(&name), "deployment name {name:?}");
    for (k, v) in deployment.metadata.labels.iter().flatten() {
        prop_assert!(is_label_value(v), "label {k}={v:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Arbitrary specs never crash the pipeline, and `validate` agrees with admission.
    #[test]
    fn validate_agrees_with_admission_and_never_panics(spec in spec()) {
        let obj = object(&spec);
        let server = server_causes(obj.clone());
        for c in &server {
            prop_assert!(!c.field.is_empty(), "server cause without a field: {c:?}");
        }
        // The operator reads objects as the API server stored them: non-nullable nulls dropped.
        let mut obj = obj;
        flotilla_operator::validate::schema::drop_nulls(&mut obj["spec"]);
        let operator: Result<(), Vec<String>> = match serde_path_to_error::deserialize::<_, MicroService>(obj) {
            Err(e) => Err(vec![e.path().to_string()]),
            Ok(ms) => match validate(&ms, None, &|_: &str| Some(80)) {
                Ok(v) => {
                    let built = build(&v.spec, &Default::default());
                    prop_assert_eq!(&built, &build(&v.spec, &Default::default()), "building twice differs");
                    check_built(&built)?;
                    Ok(())
                }
                Err(e) => Err(e.errors.into_iter().map(|f| f.field).collect()),
            },
        };
        match (&operator, server.is_empty()) {
            (Ok(()), true) => {}
            (Ok(()), false) => prop_assert!(false, "server refused what validate admits: {server:?} for {spec}"),
            (Err(fields), true) => prop_assert!(fields.iter().all(|f| operator_only(f)), "validate refused what the server admits: {fields:?} for {spec}"),
            (Err(fields), false) => {
                for f in fields {
                    prop_assert!(f.starts_with("spec") || f.starts_with("metadata"), "rejection without a field: {f:?}");
                }
            }
        }
    }
}

/// The generator reaches both verdicts: a fuzz run that only ever saw rejections would
/// prove little.
#[test]
fn generator_reaches_both_verdicts() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..200 {
        let Ok(tree) = spec().new_tree(&mut runner) else {
            continue;
        };
        if server_causes(object(&tree.current())).is_empty() {
            ok += 1
        } else {
            bad += 1
        }
    }
    println!("200 generated specs: {ok} admitted, {bad} refused");
    assert!(ok > 10 && bad > 10, "{ok} admitted, {bad} refused");
}
