//! Checks of the samples chart (`charts/flotilla-samples`): lint, valid objects whose
//! MicroServices satisfy the CRD schema, typo rejection, and the same services as
//! `services/deploy/`. Also: both charts' README values tables list every value.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use flotilla_e2e::chart::{self, kind_of, name_of};
use flotilla_e2e::tools;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

const RELEASE: &str = "flotilla-samples";
const NAMESPACE: &str = "demo";

fn render(chart_name: &str, sets: &[&str]) -> Result<Vec<Value>> {
    chart::render_docs(chart_name, RELEASE, NAMESPACE, sets)
}

fn render_and_validate(chart_name: &str, sets: &[&str]) -> Result<Vec<Value>> {
    chart::render_and_validate(chart_name, RELEASE, NAMESPACE, sets)
}

/// Dotted paths of the leaves of `values` (an empty map or list is a leaf).
fn leaf_keys(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_keys(child, &path, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn readme_values_tables_list_every_value() -> Result<()> {
    // Each chart README's values table names exactly the keys its values.yaml has.
    for chart_name in ["flotilla", "flotilla-samples"] {
        let dir = chart::chart_dir(chart_name);
        let values: Value =
            serde_norway::from_str(&std::fs::read_to_string(dir.join("values.yaml"))?)?;
        let mut in_values = BTreeSet::new();
        leaf_keys(&values, "", &mut in_values);
        let readme = std::fs::read_to_string(dir.join("README.md"))?;
        let values_section = readme
            .split("\n## ")
            .find(|section| section.starts_with("Values"))
            .with_context(|| format!("{chart_name} README has no Values section"))?;
        let in_readme: BTreeSet<String> = values_section
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(key, _)| key.to_owned())
            .collect();
        let undocumented: Vec<_> = in_values.difference(&in_readme).collect();
        let unknown: Vec<_> = in_readme.difference(&in_values).collect();
        ensure!(
            undocumented.is_empty() && unknown.is_empty(),
            "{chart_name} README values table is out of sync: missing {undocumented:?}, \
             not in values.yaml {unknown:?}"
        );
    }
    Ok(())
}

#[test]
fn samples_chart_passes_strict_lint() -> Result<()> {
    // The samples chart is held to the same lint bar as the operator chart.
    let helm = tools::find("helm")?;
    let dir = chart::chart_dir("flotilla-samples");
    tools::run_ok(
        &helm,
        ["lint".as_ref(), "--strict".as_ref(), dir.as_os_str()],
        None,
    )?;
    Ok(())
}

#[test]
fn samples_render_valid_microservices() -> Result<()> {
    // The samples render valid objects, and their MicroServices satisfy the CRD schema, with
    // defaults and with every option on.
    let all = [
        "auth.autoscaling.enabled=true",
        "auth.adminToken=admin",
        "users.adminToken=admin",
        "auth.config.LOG_LEVEL=debug",
        "users.config.LOG_LEVEL=debug",
    ];
    for sets in [&[][..], &all[..]] {
        let docs = render_and_validate("flotilla-samples", sets)?;
        let names: BTreeSet<&str> = docs
            .iter()
            .filter(|d| kind_of(d) == "MicroService")
            .map(name_of)
            .collect();
        ensure!(names == BTreeSet::from(["auth", "users"]), "{names:?}");
    }
    let events = [
        "orders.enabled=true",
        "shipping.enabled=true",
        "broker.deploy=true",
    ];
    let docs = render_and_validate("flotilla-samples", &events)?;
    let names: BTreeSet<&str> = docs
        .iter()
        .filter(|d| kind_of(d) == "MicroService")
        .map(name_of)
        .collect();
    ensure!(
        names == BTreeSet::from(["auth", "orders", "shipping", "users"]),
        "{names:?}"
    );
    let docs = render("flotilla-samples", &all)?;
    let auth = docs
        .iter()
        .find(|d| kind_of(d) == "MicroService" && name_of(d) == "auth")
        .context("no auth MicroService")?;
    let auth: flotilla_crds::MicroService = serde_json::from_value(auth.clone())?;
    ensure!(auth.spec.autoscaling.is_some_and(|a| a.max_replicas == 5));
    ensure!(auth.spec.dependencies == Some(vec!["users".to_owned()]));
    Ok(())
}

#[test]
fn samples_schema_rejects_a_typo() -> Result<()> {
    // A misspelled samples value fails and is named.
    let helm = tools::find("helm")?;
    let output = tools::run(
        &helm,
        chart::template_args("flotilla-samples", RELEASE, NAMESPACE, &["auth.replica=3"]),
        None,
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("replica"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn samples_chart_mirrors_services_deploy() -> Result<()> {
    // The samples chart installs the same MicroServices as services/deploy/ (apart from the
    // replica count, resources and autoscaling, which are chart values), and the same Secret names
    // and keys.
    let docs = render(
        "flotilla-samples",
        &["shipping.enabled=true", "broker.deploy=true"],
    )?;
    for name in ["users", "auth", "shipping"] {
        let sample = flotilla_e2e::msvc::sample(name)?;
        let rendered = docs
            .iter()
            .find(|d| kind_of(d) == "MicroService" && name_of(d) == name)
            .with_context(|| format!("no {name} MicroService rendered"))?;
        let rendered: flotilla_crds::MicroService = serde_json::from_value(rendered.clone())?;
        let normalize = |spec: &flotilla_crds::MicroServiceSpec| {
            let mut spec = spec.clone();
            spec.replicas = 0;
            spec.resources = None;
            spec.autoscaling = None;
            spec
        };
        ensure!(
            normalize(&rendered.spec) == normalize(&sample.msvc.spec),
            "{name}: chart spec {:#?}\ndiffers from services/deploy {:#?}",
            rendered.spec,
            sample.msvc.spec
        );
        for secret in &sample.secrets {
            let secret_name = secret.metadata.name.clone().unwrap_or_default();
            let chart_secret = docs
                .iter()
                .find(|d| kind_of(d) == "Secret" && name_of(d) == secret_name)
                .with_context(|| format!("chart renders no Secret {secret_name}"))?;
            let chart_keys: BTreeSet<String> = chart_secret
                .get("data")
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let sample_keys: BTreeSet<String> = secret
                .string_data
                .iter()
                .flat_map(|m| m.keys().cloned())
                .chain(secret.data.iter().flat_map(|m| m.keys().cloned()))
                .collect();
            ensure!(
                chart_keys == sample_keys,
                "{secret_name}: {chart_keys:?} vs {sample_keys:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn users_api_is_fenced_to_auth_and_the_operator() -> Result<()> {
    // The samples chart admits to users' port only auth's pods of its own namespace and the
    // operator's pods of the operator's namespace, selected by the `kubernetes.io/metadata.name`
    // label the API server sets (not by labels a tenant can copy onto pods elsewhere); the
    // operator chart's pods carry exactly the labels that policy names, and the policy can be
    // switched off.
    let docs = render_and_validate("flotilla-samples", &[])?;
    let policy = docs
        .iter()
        .find(|d| kind_of(d) == "NetworkPolicy" && name_of(d) == "users-api")
        .context("no users-api NetworkPolicy")?;
    let policy: NetworkPolicy = serde_json::from_value(policy.clone())?;
    let spec = policy.spec.context("no spec")?;
    ensure!(
        spec.pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .and_then(|l| l.get("app.kubernetes.io/name"))
            .map(String::as_str)
            == Some("users"),
        "{spec:?}"
    );
    ensure!(
        spec.policy_types == Some(vec!["Ingress".to_owned()]),
        "{spec:?}"
    );
    let ingress = spec.ingress.unwrap_or_default();
    ensure!(ingress.len() == 1, "{ingress:?}");
    let rule = &ingress[0];
    let ports: Vec<_> = rule
        .ports
        .iter()
        .flatten()
        .map(|p| (p.protocol.clone(), p.port.clone()))
        .collect();
    ensure!(
        ports == [(Some("TCP".to_owned()), Some(IntOrString::Int(8080)))],
        "{ports:?}"
    );
    let from = rule.from.clone().unwrap_or_default();
    let labels = |pairs: &[(&str, &str)]| {
        Some(LabelSelector {
            match_labels: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            match_expressions: None,
        })
    };
    let auth = NetworkPolicyPeer {
        pod_selector: labels(&[
            ("app.kubernetes.io/name", "auth"),
            ("app.kubernetes.io/managed-by", "flotilla"),
        ]),
        namespace_selector: None,
        ip_block: None,
    };
    let operator = |ns: &str| NetworkPolicyPeer {
        pod_selector: labels(&[
            ("app.kubernetes.io/name", "flotilla"),
            ("app.kubernetes.io/component", "operator"),
        ]),
        namespace_selector: labels(&[("kubernetes.io/metadata.name", ns)]),
        ip_block: None,
    };
    ensure!(
        from == [auth.clone(), operator("flotilla-system")],
        "peers {from:?}"
    );

    let elsewhere = render(
        "flotilla-samples",
        &["users.networkPolicy.operatorNamespace=platform"],
    )?;
    let peers = elsewhere
        .iter()
        .find(|d| kind_of(d) == "NetworkPolicy")
        .map(|d| serde_json::from_value::<NetworkPolicy>(d.clone()))
        .transpose()?
        .and_then(|p| p.spec)
        .and_then(|s| s.ingress)
        .and_then(|i| i.into_iter().next())
        .and_then(|r| r.from)
        .unwrap_or_default();
    ensure!(peers == [auth, operator("platform")], "peers {peers:?}");
    let bad = chart::render(
        "flotilla-samples",
        RELEASE,
        NAMESPACE,
        &["users.networkPolicy.operatorNamespace=Not_A_Namespace"],
    );
    ensure!(bad.is_err(), "an invalid operator namespace rendered");

    let operator_labels = from[1]
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    let operator = chart::render_docs("flotilla", "flotilla", "flotilla-system", &[])?;
    let pod_labels = operator
        .iter()
        .find(|d| kind_of(d) == "Deployment")
        .and_then(|d| d["spec"]["template"]["metadata"]["labels"].as_object())
        .context("operator chart renders no Deployment with pod labels")?;
    for (key, value) in operator_labels {
        ensure!(
            pod_labels.get(&key).and_then(Value::as_str) == Some(value.as_str()),
            "operator pods lack {key}={value}: {pod_labels:?}"
        );
    }

    let off = render("flotilla-samples", &["users.networkPolicy.enabled=false"])?;
    ensure!(!off.iter().any(|d| kind_of(d) == "NetworkPolicy"));
    Ok(())
}

/// The public key (SubjectPublicKeyInfo PEM) of a PEM private key or certificate, by openssl.
fn openssl_public_key(args: &[&str], pem: &[u8]) -> Result<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running openssl")?;
    child
        .stdin
        .take()
        .context("openssl stdin")?
        .write_all(pem)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "openssl {args:?} failed");
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn users_and_orders_get_only_the_public_half_of_auths_signing_key() -> Result<()> {
    // auth alone reads the generated Ed25519 key; users and orders read a Secret holding its
    // public half (a certificate, the only form Helm writes it in) and auth's JWKS URL; no
    // service is given the old shared JWT_SECRET.
    let docs = render_and_validate("flotilla-samples", &["orders.enabled=true"])?;
    let secret = |name: &str, key: &str| -> Result<Vec<u8>> {
        let doc = docs
            .iter()
            .find(|d| kind_of(d) == "Secret" && name_of(d) == name)
            .with_context(|| format!("no Secret {name}"))?;
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(doc.clone())?;
        let value = secret.data.and_then(|mut d| d.remove(key));
        Ok(value.with_context(|| format!("{name} has no {key}"))?.0)
    };
    let signing = secret("auth-secrets", "signing-key")?;
    ensure!(String::from_utf8_lossy(&signing).contains("BEGIN PRIVATE KEY"));
    let from_key = openssl_public_key(&["pkey", "-pubout"], &signing)?;
    let from_cert = openssl_public_key(
        &["x509", "-pubkey", "-noout"],
        &secret("auth-public-keys", "public-keys")?,
    )?;
    ensure!(from_key.contains("BEGIN PUBLIC KEY") && from_key == from_cert);

    for doc in docs.iter().filter(|d| kind_of(d) == "MicroService") {
        let ms: flotilla_crds::MicroService = serde_json::from_value(doc.clone())?;
        let name = name_of(doc);
        let env = ms.spec.env.clone().unwrap_or_default();
        let secret_of = |var: &str| {
            env.iter()
                .find(|e| e.name == var)
                .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
                .map(|r| (r.name.clone(), r.key.clone()))
        };
        ensure!(
            !env.iter().any(|e| e.name == "JWT_SECRET"),
            "{name} still gets JWT_SECRET"
        );
        match name {
            "auth" => ensure!(
                secret_of("JWT_SIGNING_KEY") == Some(("auth-secrets".into(), "signing-key".into()))
            ),
            "users" | "orders" => {
                ensure!(
                    secret_of("JWT_PUBLIC_KEYS")
                        == Some(("auth-public-keys".into(), "public-keys".into())),
                    "{name}: {env:?}"
                );
                ensure!(
                    !env.iter()
                        .any(|e| secret_of(&e.name).is_some_and(|(s, _)| s == "auth-secrets")),
                    "{name} reads auth's private Secret"
                );
                let jwks = ms.spec.config.as_ref().and_then(|c| c.get("AUTH_JWKS_URL"));
                ensure!(
                    jwks.map(String::as_str) == Some("http://auth:8080/.well-known/jwks.json"),
                    "{name}: {jwks:?}"
                );
            }
            other => anyhow::bail!("unexpected MicroService {other}"),
        }
    }
    Ok(())
}

/// Where the MicroService `name` in `docs` takes `AMQP_URL` from: `Some((secret, key))` for a
/// `secretKeyRef`, `None` without the variable. A literal value (in `env` or `config`) is an
/// error: the URL carries the broker's password.
fn amqp_url_source(docs: &[Value], name: &str) -> Result<Option<(String, String)>> {
    let doc = docs
        .iter()
        .find(|d| kind_of(d) == "MicroService" && name_of(d) == name)
        .with_context(|| format!("no {name} MicroService"))?;
    let ms: flotilla_crds::MicroService = serde_json::from_value(doc.clone())?;
    ensure!(
        !ms.spec
            .config
            .iter()
            .flatten()
            .any(|(k, _)| k == "AMQP_URL"),
        "{name}: AMQP_URL in plain config"
    );
    let Some(var) = ms.spec.env.iter().flatten().find(|e| e.name == "AMQP_URL") else {
        return Ok(None);
    };
    let secret = var
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .with_context(|| format!("{name}: AMQP_URL is not from a Secret: {var:?}"))?;
    Ok(Some((secret.name.clone(), secret.key.clone())))
}

/// The decoded `data` of the Secret `name` in `docs`.
fn secret_data(docs: &[Value], name: &str) -> Result<BTreeMap<String, String>> {
    let doc = docs
        .iter()
        .find(|d| kind_of(d) == "Secret" && name_of(d) == name)
        .with_context(|| format!("no Secret {name}"))?;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(doc.clone())?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

#[test]
fn orders_and_shipping_get_the_broker_the_values_name() -> Result<()> {
    // broker.deploy renders a RabbitMQ (Deployment and Service `rabbitmq`) whose user and URL
    // are in Secret rabbitmq-credentials, which orders and shipping read; broker.url puts an
    // existing broker's URL in that Secret and deploys none; with neither, no Secret is
    // rendered, orders publishes nothing and shipping still reads the Secret (one the user
    // makes); the URL is never a literal; a URL that is not AMQP is refused.
    let on = ["orders.enabled=true", "shipping.enabled=true"];
    let from_secret = Some(("rabbitmq-credentials".to_owned(), "url".to_owned()));
    let deployed = render_and_validate("flotilla-samples", &[on[0], on[1], "broker.deploy=true"])?;
    for name in ["orders", "shipping"] {
        ensure!(amqp_url_source(&deployed, name)? == from_secret, "{name}");
    }
    let credentials = secret_data(&deployed, "rabbitmq-credentials")?;
    let password = credentials.get("password").cloned().unwrap_or_default();
    ensure!(
        password.len() >= 32,
        "a generated password: {credentials:?}"
    );
    ensure!(
        credentials.get("username").map(String::as_str) == Some("flotilla")
            && credentials.get("url")
                == Some(&format!("amqp://flotilla:{password}@rabbitmq:5672/%2f")),
        "{credentials:?}"
    );
    let broker = deployed
        .iter()
        .find(|d| kind_of(d) == "Deployment" && name_of(d) == "rabbitmq")
        .context("no rabbitmq Deployment")?;
    let container = &broker["spec"]["template"]["spec"]["containers"][0];
    ensure!(container["image"] == "rabbitmq:3", "{broker}");
    for (var, key) in [
        ("RABBITMQ_DEFAULT_USER", "username"),
        ("RABBITMQ_DEFAULT_PASS", "password"),
    ] {
        let env = container["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == var))
            .with_context(|| format!("broker without {var}"))?;
        let from = &env["valueFrom"]["secretKeyRef"];
        ensure!(
            from["name"] == "rabbitmq-credentials" && from["key"] == key,
            "{var}: {env}"
        );
    }
    let service = deployed
        .iter()
        .find(|d| kind_of(d) == "Service" && name_of(d) == "rabbitmq")
        .context("no rabbitmq Service")?;
    ensure!(service["spec"]["ports"][0]["port"] == 5672, "{service}");

    let existing = "amqp://shop:secret@rabbitmq.messaging:5672/%2f";
    let url_set = format!("broker.url={existing}");
    let external = render_and_validate(
        "flotilla-samples",
        &[on[0], on[1], "broker.deploy=true", &url_set],
    )?;
    for name in ["orders", "shipping"] {
        ensure!(amqp_url_source(&external, name)? == from_secret, "{name}");
    }
    let credentials = secret_data(&external, "rabbitmq-credentials")?;
    ensure!(
        credentials == BTreeMap::from([("url".to_owned(), existing.to_owned())]),
        "{credentials:?}"
    );
    ensure!(
        !external
            .iter()
            .any(|d| kind_of(d) != "Secret" && name_of(d) == "rabbitmq"),
        "a broker deployed beside broker.url"
    );

    let neither = render_and_validate("flotilla-samples", &on)?;
    ensure!(amqp_url_source(&neither, "orders")?.is_none());
    ensure!(amqp_url_source(&neither, "shipping")? == from_secret);
    ensure!(!neither
        .iter()
        .any(|d| name_of(d) == "rabbitmq" || name_of(d) == "rabbitmq-credentials"));

    let bad = chart::render(
        "flotilla-samples",
        RELEASE,
        NAMESPACE,
        &["broker.url=http://rabbitmq:5672"],
    );
    ensure!(bad.is_err(), "a non-AMQP broker URL rendered");
    Ok(())
}
