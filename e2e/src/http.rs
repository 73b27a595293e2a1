//! Sending HTTP requests to a Service the way a client in the cluster would.
//!
//! On the local cluster, cluster IPs are loopback addresses served by the node's proxy, so the
//! request goes straight to `http://<clusterIP>:<port>`. On a real cluster the test runner is
//! outside the cluster network, so the request goes through the API server's service proxy
//! (`/api/v1/namespaces/<ns>/services/<name>:<port>/proxy/<path>`), which still load-balances over
//! the Service's endpoints.

use anyhow::{bail, Context, Result};
use flotilla_testkit::http::{self as client, Reply, REQUEST_TIMEOUT};
use flotilla_testkit::Harness;
use k8s_openapi::api::core::v1::Service;
use serde_json::Value;

/// Sends `method path` with an optional JSON body to the Service `service` in the test namespace,
/// on the Service's first port.
pub async fn service_request(
    h: &Harness,
    service: &str,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> Result<Reply> {
    let svc = h
        .api::<Service>()
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
    if h.is_local() {
        let ip = spec.cluster_ip.context("Service has no cluster IP")?;
        let url = format!("http://{ip}:{port}{path}");
        let mut request = client::request(method, &url).header("content-type", "application/json");
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if body.is_some() {
            request = request.body(payload);
        }
        client::send(request).await
    } else {
        let uri = format!(
            "/api/v1/namespaces/{}/services/{service}:{port}/proxy{path}",
            h.ns
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
        let response = tokio::time::timeout(REQUEST_TIMEOUT, h.client.send(request))
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

/// Signs `email` up through the users Service `users`, trying again until it answers 201 within
/// `timeout` (its pods may still be starting); returns the created user as users answered it.
pub async fn sign_up(
    h: &Harness,
    users: &str,
    email: &str,
    password: &str,
    timeout: std::time::Duration,
) -> Result<Value> {
    let body = serde_json::json!({"name": "E2E", "email": email, "password": password});
    let created = h
        .poll_within(
            "creating a user through the users Service",
            timeout,
            || async {
                let reply =
                    service_request(h, users, http::Method::POST, "/users", Some(&body), None)
                        .await?;
                Ok((reply.status == 201).then_some(reply))
            },
        )
        .await?
        .json()?;
    if created.get("email").and_then(Value::as_str) != Some(email) {
        bail!("users created another account: {created}");
    }
    Ok(created)
}

/// Logs `email` in through the auth Service `auth`; returns the token it issued.
pub async fn log_in(h: &Harness, auth: &str, email: &str, password: &str) -> Result<String> {
    let body = serde_json::json!({"email": email, "password": password});
    let reply = service_request(h, auth, http::Method::POST, "/login", Some(&body), None).await?;
    if reply.status != 200 {
        bail!("login: {} {}", reply.status, reply.body);
    }
    reply
        .json()?
        .get("token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .context("login returned no token")
}
