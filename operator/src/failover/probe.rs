//! One HTTP probe of one pod: the readiness request and the optional metrics scrape, each bounded
//! by the probe timeout, over one shared client that reuses connections.
//!
//! No decisions here: a probe returns what it saw; the engine judges it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::error_rate::{self, Counts};
use super::pod_health::Observation;
use super::promtext;

/// Largest metrics body read; a larger one counts as no data.
const MAX_METRICS_BYTES: usize = 4 << 20;
/// Largest readiness body drained so the connection can be reused.
const MAX_READINESS_BYTES: usize = 64 << 10;

/// The shared HTTP client of the prober.
#[derive(Clone, Debug)]
pub struct ProbeClient {
    inner: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for ProbeClient {
    fn default() -> Self {
        Self::new()
    }
}

impl ProbeClient {
    /// A client with keep-alive connections; idle ones are closed after 30 s, well above any
    /// probe period, so steady probing reuses one connection per pod.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Self { inner }
    }

    async fn get(&self, addr: SocketAddr, path: &str, limit: usize) -> Result<(u16, Bytes), ()> {
        let uri: hyper::Uri = format!("http://{addr}{path}").parse().map_err(|_| ())?;
        let resp = self.inner.get(uri).await.map_err(|_| ())?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|_| ())?
            .to_bytes();
        Ok((status, body))
    }

    /// Requests the readiness path; 2xx and 3xx are success, as for kubelet HTTP probes.
    pub async fn readiness(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Observation {
        match tokio::time::timeout(timeout, self.get(addr, path, MAX_READINESS_BYTES)).await {
            Err(_) => Observation::Timeout,
            Ok(Err(())) => Observation::ConnectError,
            Ok(Ok((status, _))) if (200..400).contains(&status) => Observation::Success,
            Ok(Ok((status, _))) => Observation::BadStatus(status),
        }
    }

    /// Scrapes the metrics path for request counts; any failure is "no data", never a verdict.
    pub async fn scrape(&self, addr: SocketAddr, path: &str, timeout: Duration) -> Option<Counts> {
        let (status, body) = tokio::time::timeout(timeout, self.get(addr, path, MAX_METRICS_BYTES))
            .await
            .ok()?
            .ok()?;
        if status != 200 {
            return None;
        }
        let text = std::str::from_utf8(&body).ok()?;
        error_rate::counts(&promtext::parse(text).ok()?)
    }
}

/// What one probe run reports back to the engine.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The readiness result.
    pub observation: Observation,
    /// How long the readiness request took.
    pub latency: Duration,
    /// When it finished.
    pub at: Instant,
    /// The scrape, if one was asked for: `Some(None)` means scraped but no data.
    pub scrape: Option<Option<Counts>>,
}

/// Runs one probe (and a scrape when asked). Bounded by at most twice `timeout`.
pub async fn run(
    client: &ProbeClient,
    addr: SocketAddr,
    readiness_path: &str,
    metrics_path: Option<&str>,
    timeout: Duration,
) -> ProbeReport {
    let start = Instant::now();
    let observation = client.readiness(addr, readiness_path, timeout).await;
    let latency = start.elapsed();
    let scrape = match metrics_path {
        Some(p) if observation.is_success() => Some(client.scrape(addr, p, timeout).await),
        _ => None,
    };
    ProbeReport {
        observation,
        latency,
        at: Instant::now(),
        scrape,
    }
}
