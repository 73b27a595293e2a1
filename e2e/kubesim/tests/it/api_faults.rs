//! Fault injection through the library handle and the admin HTTP API.

use std::time::{Duration, Instant};

use anyhow::Result;
use flotilla_testkit::wait::poll;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::Api;
use kubesim::LatencyRule;
use serde_json::json;

use crate::support::{api_error, raw, raw_text, start};

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).expect("valid")
}

#[tokio::test]
async fn next_n_matching_requests_fail() -> Result<()> {
    // A rule fails exactly its count of matching requests with the chosen status.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    cluster.faults().fail_next("create", "configmaps", 500, 2);
    for _ in 0..2 {
        let status = api_error(api.create(&PostParams::default(), &cm("a")).await)?;
        assert_eq!(
            (status.code, status.reason.as_str()),
            (500, "InternalError")
        );
    }
    api.list(&Default::default()).await?;
    api.create(&PostParams::default(), &cm("a")).await?;

    cluster.faults().fail_next("get", "configmaps", 409, 1);
    assert_eq!(api_error(api.get("a").await)?.code, 409);
    api.get("a").await?;
    Ok(())
}

#[tokio::test]
async fn throttling_sends_retry_after() -> Result<()> {
    // 429 carries a Retry-After header and retryAfterSeconds, like API priority and fairness.
    let cluster = start().await?;
    cluster.faults().fail_next("list", "configmaps", 429, 1);
    let client = reqwest::Client::new();
    let resp = client
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps",
            cluster.url()
        ))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(body["details"]["retryAfterSeconds"], 1);
    Ok(())
}

#[tokio::test]
async fn latency_delays_matching_requests() -> Result<()> {
    // Latency rules delay only the requests they match.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    api.create(&PostParams::default(), &cm("a")).await?;
    cluster.faults().add_latency(LatencyRule {
        verb: Some("get".into()),
        resource: Some("configmaps".into()),
        millis: 300,
        holder_identity: None,
    });
    let t = Instant::now();
    api.get("a").await?;
    assert!(t.elapsed() >= Duration::from_millis(300));
    cluster.faults().clear();
    Ok(())
}

#[tokio::test]
async fn admin_api_injects_and_clears_faults() -> Result<()> {
    // Out-of-process tests use POST/DELETE /kubesim/faults and POST /kubesim/drop-watches.
    let cluster = start().await?;
    let rule = json!({"verb": "list", "resource": "pods", "status": 503, "count": 5, "retryAfterSeconds": 2});
    let (code, _) = raw(
        &cluster,
        "POST",
        "/kubesim/faults",
        "application/json",
        Some(rule.to_string()),
    )
    .await?;
    assert_eq!(code, 201);
    let (code, body) = raw(&cluster, "GET", "/api/v1/namespaces/default/pods", "", None).await?;
    assert_eq!(
        (code, body["reason"].as_str()),
        (503, Some("ServiceUnavailable"))
    );
    let (code, _) = raw(&cluster, "DELETE", "/kubesim/faults", "", None).await?;
    assert_eq!(code, 200);
    let (code, _) = raw(&cluster, "GET", "/api/v1/namespaces/default/pods", "", None).await?;
    assert_eq!(code, 200);
    let (code, _) = raw(
        &cluster,
        "POST",
        "/kubesim/faults",
        "application/json",
        Some("{\"status\": \"x\"}".into()),
    )
    .await?;
    assert_eq!(code, 400);

    // A long watch ends when watches are dropped.
    let url =
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=600";
    let watch = tokio::spawn({
        let base = cluster.url().to_string();
        async move { reqwest::get(format!("{base}{url}")).await?.text().await }
    });
    // Drop repeatedly until the watch (which may not have started yet) has ended.
    poll(
        "the watch to end after dropping watches",
        Duration::from_secs(30),
        || async {
            raw_text(&cluster, "POST", "/kubesim/drop-watches", "", None, None).await?;
            Ok(watch.is_finished().then_some(()))
        },
    )
    .await?;
    Ok(())
}
