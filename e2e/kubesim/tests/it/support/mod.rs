//! The one way kubesim's integration tests start a cluster and reach it: [`start`] and
//! [`start_with`] for an API server alone, [`node::Sim`] for one whose node runs pods, raw HTTP
//! for requests kube-rs does not send, and the fixtures. Waits are not here: every test waits
//! through `flotilla_testkit::wait`.

pub mod node;

use anyhow::{bail, Context, Result};
use kubesim::{Cluster, ClusterConfig};
use serde_json::Value;

/// Starts a plain-HTTP cluster on a free loopback port.
pub async fn start() -> Result<Cluster> {
    start_with(ClusterConfig::default()).await
}

/// Starts a cluster configured by `config` (HTTPS and RBAC, a node directory for logs, ...).
pub async fn start_with(config: ClusterConfig) -> Result<Cluster> {
    Cluster::start(config).await.context("starting kubesim")
}

/// A raw HTTP request against the cluster; returns the status code and the JSON body
/// (`Value::Null` when the body is not JSON).
pub async fn raw(
    cluster: &Cluster,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<String>,
) -> Result<(u16, Value)> {
    let (code, text) = raw_text(cluster, method, path, content_type, body, None).await?;
    Ok((code, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// A raw HTTP request against the cluster; returns the status code and the body as text.
pub async fn raw_text(
    cluster: &Cluster,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<String>,
    accept: Option<&str>,
) -> Result<(u16, String)> {
    let client = reqwest::Client::new();
    let url = format!("{}{}", cluster.url(), path);
    let mut req = client.request(method.parse()?, url);
    if !content_type.is_empty() {
        req = req.header("content-type", content_type);
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await?;
    let code = resp.status().as_u16();
    Ok((code, resp.text().await?))
}

/// The API error of a kube-rs call that must fail.
pub fn api_error<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Result<Box<kube::core::Status>> {
    match r {
        Err(kube::Error::Api(s)) => Ok(s),
        other => bail!("expected an API error, got {other:?}"),
    }
}

/// Reads a YAML fixture from `tests/fixtures`.
pub fn fixture(name: &str) -> Result<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_norway::from_str(&text)?)
}
