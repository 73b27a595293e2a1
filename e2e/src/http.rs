//! Sending HTTP requests to a Service the way a client in the cluster would.
//!
//! On the local cluster, cluster IPs are loopback addresses served by the node's proxy, so the
//! request goes straight to `http://<clusterIP>:<port>`. On a real cluster the test runner is
//! outside the cluster network, so the request goes through the API server's service proxy
//! (`/api/v1/namespaces/<ns>/services/<name>:<port>/proxy/<path>`), which still load-balances over
//! the Service's endpoints.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use serde_json::Value;

use crate::env::Ctx;

/// An HTTP response: status code and body text.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("body is not JSON: {}", self.body))
    }
}

/// Timeout of one request: long enough for a loaded machine, short enough to retry within a wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `method path` with an optional JSON body to the Service `service` in the test namespace,
/// on the Service's first port.
pub async fn service_request(
    ctx: &Ctx<'_>,
    service: &str,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> Result<Reply> {
    let svc = Api::<Service>::namespaced(ctx.client.clone(), &ctx.ns)
        .get(service)
        .await
        .with_context(|| format!("reading Service {service}"))?;
    let spec = svc.spec.context("Service has no spec")?;
    let port = spec
        .ports
        .as_ref()
        .and_then(|ports| ports.first())
        .map(|p| p.port)
        .context("Service has no port")?;
    let payload = match body {
        Some(value) => serde_json::to_vec(value)?,
        None => Vec::new(),
    };
    if ctx.env.is_local() {
        let ip = spec.cluster_ip.context("Service has no cluster IP")?;
        let url = format!("http://{ip}:{port}{path}");
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let mut request = http
            .request(method, &url)
            .header("content-type", "application/json");
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if body.is_some() {
            request = request.body(payload);
        }
        let response = request.send().await.with_context(|| url.clone())?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        Ok(Reply { status, body })
    } else {
        let uri = format!(
            "/api/v1/namespaces/{}/services/{service}:{port}/proxy{path}",
            ctx.ns
        );
        if bearer.is_some() {
            // The API server authenticates the proxy request with the Authorization header and
            // does not forward it, so a bearer token cannot reach the Service this way.
            bail!("bearer tokens cannot be sent through the API server's service proxy");
        }
        let request = http::Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", "application/json")
            .body(kube::client::Body::from(payload))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, ctx.client.send(request))
            .await
            .with_context(|| format!("{uri} timed out"))??;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect_bytes().await?;
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}
