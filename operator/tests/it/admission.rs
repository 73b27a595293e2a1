//! One verdict for every spec: each case of the agreement table goes through the CRD on a
//! real API server (kubesim, which evaluates the schema and the CEL rules; `dryRun=All`,
//! `fieldValidation=Strict` as `kubectl apply` sends), through `validate` (after decoding into
//! the typed MicroService) and through `render`, and all three must give the case's verdict
//! with its field path in every rejection.

use crate::admission_cases::{table, Case, Verdict, NAME};
use anyhow::{bail, Context, Result};
use flotilla_crds::MicroService;
use flotilla_operator::render::render;
use flotilla_operator::validate::validate;
use serde_json::{json, Value};

const NS: &str = "admission";

/// A judge's answer: admitted, or refused with these field paths / this message.
#[derive(Debug)]
enum Answer {
    Admitted,
    Refused(String),
}

fn object(spec: &Value) -> Value {
    json!({"apiVersion": "flotilla.rs/v1alpha1", "kind": "MicroService",
        "metadata": {"name": NAME, "namespace": NS}, "spec": spec})
}

async fn server(client: &kube::Client, spec: &Value) -> Result<Answer> {
    let body = serde_json::to_vec(&object(spec))?;
    let req = http::Request::post(format!(
        "/apis/flotilla.rs/v1alpha1/namespaces/{NS}/microservices?dryRun=All&fieldValidation=Strict"
    ))
    .header("content-type", "application/json")
    .body(body)?;
    match client.request::<Value>(req).await {
        Ok(_) => Ok(Answer::Admitted),
        Err(kube::Error::Api(status)) => Ok(Answer::Refused(format!("{status:?}"))),
        Err(e) => Err(e).context("talking to the API server"),
    }
}

/// Paths of fields in `input` that decoding dropped (the type has no such field).
fn dropped(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    if let (Value::Object(i), Value::Object(o)) = (input, output) {
        for (k, v) in i {
            let p = format!("{path}.{k}");
            match o.get(k) {
                None => out.push(p),
                Some(ov) => dropped(v, ov, &p, out),
            }
        }
    }
}

fn operator_validate(spec: &Value) -> Answer {
    let mut obj = object(spec);
    flotilla_operator::validate::schema::drop_nulls(&mut obj["spec"]);
    let ms: MicroService = match serde_path_to_error::deserialize(obj) {
        Ok(ms) => ms,
        Err(e) => return Answer::Refused(format!("{}: {}", e.path(), e.inner())),
    };
    let mut lost = Vec::new();
    let typed = serde_json::to_value(&ms.spec).unwrap_or_default();
    dropped(spec, &typed, "spec", &mut lost);
    if !lost.is_empty() {
        return Answer::Refused(format!("unknown fields {lost:?}"));
    }
    match validate(&ms, Some(NS), &|_: &str| None) {
        Ok(_) => Answer::Admitted,
        Err(e) => Answer::Refused(e.to_string()),
    }
}

fn operator_render(spec: &Value) -> Result<Answer> {
    let yaml = serde_norway::to_string(&object(spec))?;
    Ok(match render(&yaml, NS) {
        Ok(_) => Answer::Admitted,
        Err(e) => Answer::Refused(e.to_string()),
    })
}

/// `spec.config[a.b]` and `spec.config.a.b` name the same field; compare in one spelling.
fn normalize(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find(']') else {
            break;
        };
        let inner = &rest[open + 1..open + close];
        if inner.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&rest[open..=open + close]);
        } else {
            out.push('.');
            out.push_str(inner);
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Checks one judge's answer against the verdict; `admits_operator_only` is true for the
/// API server, which by design admits what only the operator checks.
fn judge(case: &Case, who: &str, answer: &Answer, admits_operator_only: bool) -> Option<String> {
    let want = match case.verdict {
        Verdict::Valid => None,
        Verdict::OperatorOnly(_) if admits_operator_only => None,
        Verdict::Invalid(f) | Verdict::OperatorOnly(f) => Some(f),
    };
    match (want, answer) {
        (None, Answer::Admitted) => None,
        (None, Answer::Refused(m)) => Some(format!("{who} refused a valid spec: {m}")),
        (Some(f), Answer::Admitted) => {
            Some(format!("{who} admitted it (expected an error at {f})"))
        }
        (Some(f), Answer::Refused(m)) if normalize(m).contains(&normalize(f)) => None,
        (Some(f), Answer::Refused(m)) => Some(format!("{who} refused it without naming {f}: {m}")),
    }
}

/// Every case of the table gets the same verdict from the API server, `validate` and
/// `render`, and every rejection names the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_validate_and_render_agree() -> Result<()> {
    let env = crate::support::start_in_namespace(NS).await?;
    let cases = table();
    let mut disagreements = Vec::new();
    let mut counts = [0usize; 3];
    for case in &cases {
        let answers = [
            ("API server", server(&env.client, &case.spec).await?, true),
            ("validate", operator_validate(&case.spec), false),
            ("render", operator_render(&case.spec)?, false),
        ];
        for (who, answer, admits) in &answers {
            if let Some(problem) = judge(case, who, answer, *admits) {
                disagreements.push(format!("{}: {problem}", case.what));
            }
        }
        counts[match case.verdict {
            Verdict::Valid => 0,
            Verdict::Invalid(_) => 1,
            Verdict::OperatorOnly(_) => 2,
        }] += 1;
    }
    println!(
        "{} cases: {} valid, {} invalid, {} operator-only",
        cases.len(),
        counts[0],
        counts[1],
        counts[2]
    );
    if cases.len() < 100 {
        bail!("the table has only {} cases", cases.len());
    }
    if !disagreements.is_empty() {
        bail!(
            "{} disagreements:\n{}",
            disagreements.len(),
            disagreements.join("\n")
        );
    }
    Ok(())
}

/// A spec over a size bound is refused by the API server itself, with a message that names the
/// field, the size sent and the bound, as a tenant sees it from `kubectl apply`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_specs_are_refused_naming_the_bound() -> Result<()> {
    let env = crate::support::start_in_namespace("admission-size").await?;
    let keys: serde_json::Map<String, Value> =
        (0..257).map(|i| (format!("K{i}"), json!("v"))).collect();
    let cases = [
        (
            json!({"image": "flotilla/users:0.1.0", "config": keys}),
            "spec.config: Too many: 257: must have at most 256 items",
        ),
        (
            json!({"image": "flotilla/users:0.1.0", "args": vec!["a"; 257]}),
            "spec.args: Too many: 257: must have at most 256 items",
        ),
        (
            json!({"image": "flotilla/users:0.1.0",
                   "env": [{"name": "A", "value": "x".repeat(32769)}]}),
            "spec.env[0].value: Too long: may not be more than 32768 bytes",
        ),
    ];
    for (spec, want) in cases {
        let mut obj = object(&spec);
        obj["metadata"]["namespace"] = json!("admission-size");
        let req = http::Request::post(
            "/apis/flotilla.rs/v1alpha1/namespaces/admission-size/microservices",
        )
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&obj)?)?;
        match env.client.request::<Value>(req).await {
            Ok(_) => bail!("admitted; expected {want:?}"),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 || !status.message.contains(want) {
                    bail!(
                        "expected 422 with {want:?}, got {} {:?}",
                        status.code,
                        status.message
                    );
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A CRD whose rule does not compile is refused by the API server, naming the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_with_a_broken_rule_is_refused() -> Result<()> {
    let env = crate::support::start_in_namespace("admission-crd").await?;
    let mut crd = serde_json::to_value(flotilla_crds::crd())?;
    crd["metadata"]["name"] = json!("brokens.flotilla.rs");
    crd["spec"]["names"] = json!({"kind": "Broken", "plural": "brokens"});
    let auto = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["autoscaling"];
    auto["x-kubernetes-validations"] = json!([{"rule": "self.minReplica <= self.maxReplicas"}]);
    let req = http::Request::post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&crd)?)?;
    match env.client.request::<Value>(req).await {
        Ok(_) => bail!("the CRD was accepted"),
        Err(kube::Error::Api(status)) => {
            let text = format!("{status:?}");
            for part in [
                "properties[autoscaling].x-kubernetes-validations[0].rule",
                "undefined field 'minReplica'",
            ] {
                if !text.contains(part) {
                    bail!("{part:?} missing from {text}");
                }
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
