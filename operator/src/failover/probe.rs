//! One HTTP probe of one pod: the readiness request and the optional metrics scrape, each bounded
//! by the probe timeout, over one shared client that reuses connections.
//!
//! No decisions here: a probe returns what it saw; the engine judges it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::error_rate::Counts;
use super::pod_health::Observation;
use super::scrape::{Rejected, Scanner, ScrapeLimits};
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

    async fn send(&self, addr: SocketAddr, path: &str) -> Result<hyper::Response<Incoming>, ()> {
        let uri: hyper::Uri = format!("http://{addr}{path}").parse().map_err(|_| ())?;
        self.inner.get(uri).await.map_err(|_| ())
    }

    async fn get(&self, addr: SocketAddr, path: &str, limit: usize) -> Result<(u16, Bytes), ()> {
        let resp = self.send(addr, path).await?;
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

    /// Scrapes the metrics path for request counts, reading the body as it streams in within
    /// `limits`; any failure is "no data" (with the reason), never a verdict. Dropping a body
    /// that went over a cap closes that connection.
    pub async fn scrape(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
        limits: ScrapeLimits,
    ) -> Result<Option<Counts>, Rejected> {
        tokio::time::timeout(timeout, self.scrape_body(addr, path, limits))
            .await
            .map_err(|_| Rejected::Timeout)?
    }

    async fn scrape_body(
        &self,
        addr: SocketAddr,
        path: &str,
        limits: ScrapeLimits,
    ) -> Result<Option<Counts>, Rejected> {
        let resp = self
            .send(addr, path)
            .await
            .map_err(|()| Rejected::Transport)?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(Rejected::BadStatus);
        }
        let mut body = resp.into_body();
        let mut scanner = Scanner::new(limits);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Rejected::Transport)?;
            if let Some(data) = frame.data_ref() {
                scanner.feed(data)?;
            }
        }
        scanner.finish()
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
    /// The scrape, if one was asked for: `Ok(None)` means scraped but the counter is absent,
    /// `Err` that the scrape gave no data and why.
    pub scrape: Option<Result<Option<Counts>, Rejected>>,
}

/// Runs one probe (and a scrape when asked). Bounded by at most twice `timeout`.
pub async fn run(
    client: &ProbeClient,
    addr: SocketAddr,
    readiness_path: &str,
    metrics_path: Option<&str>,
    timeout: Duration,
    limits: ScrapeLimits,
) -> ProbeReport {
    let start = Instant::now();
    let observation = client.readiness(addr, readiness_path, timeout).await;
    let latency = start.elapsed();
    let scrape = match metrics_path {
        Some(p) if observation.is_success() => Some(client.scrape(addr, p, timeout, limits).await),
        _ => None,
    };
    ProbeReport {
        observation,
        latency,
        at: Instant::now(),
        scrape,
    }
}
