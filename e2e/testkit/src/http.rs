//! The one HTTP client of the tests: reqwest, with a per-request timeout and a fresh connection
//! for every request, so that each request through a Service's cluster IP picks a backend anew
//! (as a new client would) and a pod taken out of the Service stops getting requests at once.

use std::time::Duration;

use anyhow::{Context, Result};
pub use reqwest::Method;
use reqwest::{Client, RequestBuilder};
use serde_json::Value;

/// Timeout of one request: long enough for a loaded machine, short enough to retry within a wait.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The client (no idle connections are kept: every request opens its own). Built per request
/// rather than shared in a static: each `#[tokio::test]` has its own runtime, and a client's
/// connections belong to the runtime that opened them.
pub fn client() -> Client {
    Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default()
}

/// A request `method url` on the shared client, to add headers or a body to before [`send`].
pub fn request(method: Method, url: &str) -> RequestBuilder {
    client().request(method, url)
}

/// Sends `request` and reads the whole reply; a refused connection or a timeout is an error
/// naming the URL.
pub async fn send(request: RequestBuilder) -> Result<Reply> {
    let (client, request) = request.build_split();
    let request = request.context("building an HTTP request")?;
    let url = request.url().to_string();
    let response = client
        .execute(request)
        .await
        .with_context(|| format!("requesting {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .with_context(|| format!("reading the reply of {url}"))?;
    Ok(Reply { status, body })
}

/// `GET url`.
pub async fn get(url: &str) -> Result<Reply> {
    send(request(Method::GET, url)).await
}

/// `GET url` of a resource that may not exist yet: its JSON body on 200, `None` on 404, and an
/// error naming the URL and the status on anything else.
pub async fn get_json_if_found<T: serde::de::DeserializeOwned>(url: &str) -> Result<Option<T>> {
    let reply = get(url).await?;
    match reply.status {
        200 => serde_json::from_str(&reply.body)
            .map(Some)
            .with_context(|| format!("GET {url}: not the JSON expected: {}", reply.body)),
        404 => Ok(None),
        other => anyhow::bail!("GET {url}: {other}: {}", reply.body),
    }
}

/// The value of one series in Prometheus text (`name` or `name{labels}` exactly as exposed),
/// `None` when absent.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.trim().parse().ok())?
    })
}

/// The value of one series of `<base>/metrics` (see [`metric_value`]), `None` when absent.
pub async fn metric(base: &str, series: &str) -> Result<Option<f64>> {
    let reply = get(&format!("{base}/metrics")).await?;
    anyhow::ensure!(reply.status == 200, "{base}/metrics: {}", reply.status);
    Ok(metric_value(&reply.body, series))
}
