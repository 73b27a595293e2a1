//! The operator chart's `notifications.webhook` values: they become the operator's
//! `--notify-webhook-*` flags and a `FLOTILLA_NOTIFY_WEBHOOK_URL` taken from the named Secret (the
//! URL never appears in the manifests), the NetworkPolicy lets the operator reach the webhook's
//! port, and the default install renders none of it. Needs helm and the validation venv.

use anyhow::{ensure, Context, Result};
use flotilla_e2e::chart::{self, find_kind, first_container, operator_deployment};
use k8s_openapi::api::core::v1::{EnvVar, SecretKeySelector};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

const RELEASE: &str = "flotilla";
const NAMESPACE: &str = "flotilla-system";

/// The operator container's args and its `FLOTILLA_NOTIFY_WEBHOOK_URL` variable, if any.
fn operator_args_and_url_env(docs: &[Value]) -> Result<(Vec<String>, Option<EnvVar>)> {
    let deployment = operator_deployment(docs)?;
    let container = first_container(&deployment)?;
    let env = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "FLOTILLA_NOTIFY_WEBHOOK_URL")
        .cloned();
    Ok((container.args.clone().unwrap_or_default(), env))
}

/// The TCP ports of egress rules that name ports but no peers (egress to any address).
fn open_egress_ports(docs: &[Value]) -> Result<Vec<i32>> {
    let policy: NetworkPolicy = serde_json::from_value(find_kind(docs, "NetworkPolicy")?.clone())?;
    let rules = policy.spec.and_then(|s| s.egress).unwrap_or_default();
    Ok(rules
        .into_iter()
        .filter(|r| r.to.is_none())
        .flat_map(|r| r.ports.unwrap_or_default())
        .filter_map(|p| match p.port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => Some(n),
            _ => None,
        })
        .collect())
}

#[test]
fn webhook_values_become_flags_and_a_secret_reference() -> Result<()> {
    // With a Secret named, the operator gets the format, timeout, retries and reasons as flags
    // and the URL from that Secret's key (never as a value), the objects stay valid, and the
    // NetworkPolicy opens the webhook's port.
    let docs = chart::render_and_validate(
        "flotilla",
        RELEASE,
        NAMESPACE,
        &[
            "notifications.webhook.existingSecret=flotilla-webhook",
            "notifications.webhook.secretKey=slack-url",
            "notifications.webhook.format=slack",
            "notifications.webhook.timeoutSeconds=2",
            "notifications.webhook.retries=0",
            "notifications.webhook.reasons={FailedOver,RolloutHalted}",
            "notifications.webhook.port=8443",
            "networkPolicy.enabled=true",
        ],
    )?;
    let (args, env) = operator_args_and_url_env(&docs)?;
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    for (flag, want) in [
        ("--notify-webhook-format", "slack"),
        ("--notify-webhook-timeout-seconds", "2"),
        ("--notify-webhook-retries", "0"),
        ("--notify-reasons", "FailedOver,RolloutHalted"),
    ] {
        ensure!(value_of(flag) == Some(want), "{flag} in {args:?}");
    }
    ensure!(
        !args.iter().any(|a| a.starts_with("--notify-webhook-url")),
        "the URL is not a flag: {args:?}"
    );
    let env = env.context("no FLOTILLA_NOTIFY_WEBHOOK_URL")?;
    ensure!(env.value.is_none(), "the URL is a plain value: {env:?}");
    let secret = env.value_from.and_then(|v| v.secret_key_ref);
    ensure!(
        secret
            == Some(SecretKeySelector {
                name: "flotilla-webhook".into(),
                key: "slack-url".into(),
                optional: None,
            }),
        "{secret:?}"
    );
    let ports = open_egress_ports(&docs)?;
    ensure!(ports.contains(&8443), "egress to any address on {ports:?}");

    // The defaults of the other values are passed as the operator's own defaults.
    let docs = chart::render_docs(
        "flotilla",
        RELEASE,
        NAMESPACE,
        &["notifications.webhook.existingSecret=flotilla-webhook"],
    )?;
    let (args, env) = operator_args_and_url_env(&docs)?;
    let joined = args.join(" ");
    ensure!(
        joined.contains("--notify-webhook-format json")
            && joined.contains("--notify-webhook-timeout-seconds 5")
            && joined.contains("--notify-webhook-retries 3")
            && !joined.contains("--notify-reasons"),
        "{args:?}"
    );
    let key = env
        .and_then(|e| e.value_from)
        .and_then(|v| v.secret_key_ref)
        .map(|s| s.key);
    ensure!(key.as_deref() == Some("url"), "{key:?}");
    Ok(())
}

#[test]
fn no_webhook_renders_no_notification_flags() -> Result<()> {
    // The default install passes no --notify-* flag, no URL variable, and opens no extra
    // egress; a format the operator does not know is refused by the values schema.
    let docs = chart::render_docs(
        "flotilla",
        RELEASE,
        NAMESPACE,
        &["networkPolicy.enabled=true"],
    )?;
    let (args, env) = operator_args_and_url_env(&docs)?;
    ensure!(!args.iter().any(|a| a.starts_with("--notify")), "{args:?}");
    ensure!(env.is_none(), "{env:?}");
    let ports = open_egress_ports(&docs)?;
    ensure!(
        ports == [443, 6443],
        "only the API server's ports (the default apiServerPorts) are open to any address: \
         {ports:?}"
    );

    let helm = flotilla_e2e::tools::find("helm")?;
    let output = flotilla_e2e::tools::run(
        &helm,
        chart::template_args(
            "flotilla",
            RELEASE,
            NAMESPACE,
            &[
                "notifications.webhook.existingSecret=flotilla-webhook",
                "notifications.webhook.format=xml",
            ],
        ),
        None,
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("format"),
        "an unknown format was accepted: {stderr}"
    );
    Ok(())
}
