//! One probe of one pod: the readiness request (an HTTP GET, or `grpc.health.v1.Health/Check`
//! for a gRPC service) and the optional metrics scrape, each bounded by the probe timeout, over
//! shared clients that reuse connections. Each readiness request carries the pod's traffic
//! verdict (`flotilla-traffic: serving|ejected`) when the engine knows it, so a pod that honours
//! the contract closes its persistent connections while it is out of the traffic.
//!
//! No decisions here: a probe returns what it saw; the engine judges it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_crds::traffic;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::error_rate::{self, Counts};
use super::pod_health::Observation;
use super::scrape::{Rejected, Scanner, ScrapeLimits};
/// Largest readiness body drained so the connection can be reused.
const MAX_READINESS_BYTES: usize = 64 << 10;

/// gRPC channels kept (one per pod address); the cache is emptied when it grows past this, so
/// churned pods cannot grow it without bound.
const MAX_GRPC_CHANNELS: usize = 4096;

/// The shared clients of the prober.
#[derive(Clone, Debug)]
pub struct ProbeClient {
    inner: Client<HttpConnector, Empty<Bytes>>,
    // One lazily connected HTTP/2 channel per pod; dropped after a failed probe so the next one
    // starts from a fresh connection.
    grpc: Arc<Mutex<HashMap<SocketAddr, Channel>>>,
}

/// What one probe run asks for.
#[derive(Debug, Clone, Copy)]
pub struct ProbeTarget<'a> {
    /// The pod's address.
    pub addr: SocketAddr,
    /// HTTP readiness path (unused for gRPC).
    pub readiness_path: &'a str,
    /// `Some(service name)` for a gRPC health check instead of the HTTP GET.
    pub grpc_service: Option<&'a str>,
    /// Scrape this metrics path after a successful readiness check (after any check when the
    /// verdict is `ejected`).
    pub metrics_path: Option<&'a str>,
    /// Bound of each request.
    pub timeout: Duration,
    /// Caps of the metrics scrape.
    pub limits: ScrapeLimits,
    /// The traffic verdict to send (`traffic::SERVING` / `traffic::EJECTED`), if known.
    pub verdict: Option<&'static str>,
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
        Self {
            inner,
            grpc: Arc::default(),
        }
    }

    async fn send(
        &self,
        addr: SocketAddr,
        path: &str,
        verdict: Option<&'static str>,
    ) -> Result<hyper::Response<Incoming>, ()> {
        let mut req = hyper::Request::get(format!("http://{addr}{path}"));
        if let Some(v) = verdict {
            req = req.header(traffic::HEADER, v);
        }
        let req = req.body(Empty::new()).map_err(|_| ())?;
        self.inner.request(req).await.map_err(|_| ())
    }

    async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        limit: usize,
        verdict: Option<&'static str>,
    ) -> Result<(u16, Bytes), ()> {
        let resp = self.send(addr, path, verdict).await?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|_| ())?
            .to_bytes();
        Ok((status, body))
    }

    /// Requests the readiness path; 2xx and 3xx are success, as for kubelet HTTP probes.
    pub async fn readiness(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
        verdict: Option<&'static str>,
    ) -> Observation {
        let get = self.get(addr, path, MAX_READINESS_BYTES, verdict);
        match tokio::time::timeout(timeout, get).await {
            Err(_) => Observation::Timeout,
            Ok(Err(())) => Observation::ConnectError,
            Ok(Ok((status, _))) if (200..400).contains(&status) => Observation::Success,
            Ok(Ok((status, _))) => Observation::BadStatus(status),
        }
    }

    fn channel(&self, addr: SocketAddr) -> Result<Channel, ()> {
        let mut cache = match self.grpc.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = cache.get(&addr) {
            return Ok(c.clone());
        }
        if cache.len() >= MAX_GRPC_CHANNELS {
            cache.clear();
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| ())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        cache.insert(addr, channel.clone());
        Ok(channel)
    }

    fn forget_channel(&self, addr: SocketAddr) {
        match self.grpc.lock() {
            Ok(mut g) => g.remove(&addr),
            Err(poisoned) => poisoned.into_inner().remove(&addr),
        };
    }

    /// Calls `grpc.health.v1.Health/Check` for `service`; only `SERVING` is success.
    pub async fn grpc_readiness(
        &self,
        addr: SocketAddr,
        service: &str,
        timeout: Duration,
        verdict: Option<&'static str>,
    ) -> Observation {
        let Ok(channel) = self.channel(addr) else {
            return Observation::ConnectError;
        };
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        if let Some(v) = verdict {
            req.metadata_mut().insert(
                traffic::HEADER,
                tonic::metadata::MetadataValue::from_static(v),
            );
        }
        let mut health = HealthClient::new(channel);
        let call = health.check(req);
        let obs = match tokio::time::timeout(timeout, call).await {
            Err(_) => Observation::Timeout,
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                Observation::ConnectError
            }
            Ok(Err(status)) => {
                Observation::GrpcNotServing(error_rate::grpc_code_name(status.code()))
            }
            Ok(Ok(resp)) => match resp.get_ref().status() {
                ServingStatus::Serving => Observation::Success,
                ServingStatus::NotServing => Observation::GrpcNotServing("NOT_SERVING"),
                ServingStatus::ServiceUnknown => Observation::GrpcNotServing("SERVICE_UNKNOWN"),
                ServingStatus::Unknown => Observation::GrpcNotServing("UNKNOWN"),
            },
        };
        if matches!(obs, Observation::Timeout | Observation::ConnectError) {
            self.forget_channel(addr);
        }
        obs
    }

    /// Scrapes the metrics path for request counts (gRPC codes for a gRPC service, HTTP statuses
    /// otherwise), reading the body as it streams in within
    /// `limits`; any failure is "no data" (with the reason), never a verdict. Dropping a body
    /// that went over a cap closes that connection.
    pub async fn scrape(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
        limits: ScrapeLimits,
        grpc: bool,
    ) -> Result<Option<Counts>, Rejected> {
        tokio::time::timeout(timeout, self.scrape_body(addr, path, limits, grpc))
            .await
            .map_err(|_| Rejected::Timeout)?
    }

    async fn scrape_body(
        &self,
        addr: SocketAddr,
        path: &str,
        limits: ScrapeLimits,
        grpc: bool,
    ) -> Result<Option<Counts>, Rejected> {
        let resp = self
            .send(addr, path, None)
            .await
            .map_err(|()| Rejected::Transport)?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(Rejected::BadStatus);
        }
        let mut body = resp.into_body();
        let mut scanner = if grpc {
            Scanner::grpc(limits)
        } else {
            Scanner::new(limits)
        };
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

/// Runs one probe (and a scrape when asked). Bounded by at most twice `target.timeout`.
pub async fn run(client: &ProbeClient, target: &ProbeTarget<'_>) -> ProbeReport {
    let start = Instant::now();
    let observation = match target.grpc_service {
        Some(service) => {
            client
                .grpc_readiness(target.addr, service, target.timeout, target.verdict)
                .await
        }
        None => {
            client
                .readiness(
                    target.addr,
                    target.readiness_path,
                    target.timeout,
                    target.verdict,
                )
                .await
        }
    };
    let latency = start.elapsed();
    // A failing pod is not scraped (its counters decide nothing), unless it is ejected: then
    // the scrape shows whether clients still reach it (sticky connections).
    let ejected = target.verdict == Some(flotilla_crds::traffic::EJECTED);
    let scrape = match target.metrics_path {
        Some(p) if observation.is_success() || ejected => Some(
            client
                .scrape(
                    target.addr,
                    p,
                    target.timeout,
                    target.limits,
                    target.grpc_service.is_some(),
                )
                .await,
        ),
        _ => None,
    };
    ProbeReport {
        observation,
        latency,
        at: Instant::now(),
        scrape,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    type Seen = Arc<Mutex<Vec<Option<String>>>>;

    fn seen_values(seen: &Seen) -> Vec<Option<String>> {
        match seen.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A plain HTTP server answering 200 that records each request's verdict header.
    async fn http_server(seen: Seen) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let v = req
                            .headers()
                            .get(traffic::HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        if let Ok(mut g) = seen.lock() {
                            g.push(v);
                        }
                        async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                Empty::<Bytes>::new(),
                            ))
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        addr
    }

    /// A gRPC health service whose answer is switchable and which records the verdict metadata.
    struct TestHealth {
        serving: Arc<AtomicBool>,
        seen: Seen,
    }

    #[tonic::async_trait]
    impl tonic_health::pb::health_server::Health for TestHealth {
        async fn check(
            &self,
            request: tonic::Request<HealthCheckRequest>,
        ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
            let v = request
                .metadata()
                .get(traffic::HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Ok(mut g) = self.seen.lock() {
                g.push(v);
            }
            if request.get_ref().service != "orders" {
                return Err(tonic::Status::not_found("unknown service"));
            }
            let status = if self.serving.load(Ordering::Acquire) {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            Ok(tonic::Response::new(
                tonic_health::pb::HealthCheckResponse {
                    status: status.into(),
                },
            ))
        }

        type WatchStream =
            futures::stream::Empty<Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>;

        async fn watch(
            &self,
            _request: tonic::Request<HealthCheckRequest>,
        ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not needed"))
        }
    }

    fn target<'a>(
        addr: SocketAddr,
        grpc: Option<&'a str>,
        verdict: &'static str,
    ) -> ProbeTarget<'a> {
        ProbeTarget {
            addr,
            readiness_path: "/readyz",
            grpc_service: grpc,
            metrics_path: None,
            timeout: Duration::from_secs(10),
            limits: ScrapeLimits::default(),
            verdict: Some(verdict),
        }
    }

    #[tokio::test]
    async fn http_probe_carries_the_traffic_verdict() {
        // Every readiness GET tells the pod whether it is in the traffic.
        let seen = Seen::default();
        let addr = http_server(seen.clone()).await;
        let client = ProbeClient::new();
        let rep = run(&client, &target(addr, None, traffic::EJECTED)).await;
        assert_eq!(rep.observation, Observation::Success);
        let rep = run(&client, &target(addr, None, traffic::SERVING)).await;
        assert_eq!(rep.observation, Observation::Success);
        assert_eq!(
            seen_values(&seen),
            vec![Some("ejected".to_owned()), Some("serving".to_owned())]
        );
    }

    #[tokio::test]
    async fn grpc_probe_checks_health_and_carries_the_verdict() {
        // A gRPC service is judged by grpc.health.v1/Check: only SERVING passes, an unknown
        // service name is reported by code, a dead server is a connect error; the verdict
        // travels as metadata.
        let serving = Arc::new(AtomicBool::new(true));
        let seen = Seen::default();
        let svc = tonic_health::pb::health_server::HealthServer::new(TestHealth {
            serving: serving.clone(),
            seen: seen.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = ProbeClient::new();
        let probe = |service| target(addr, Some(service), traffic::EJECTED);
        assert_eq!(
            run(&client, &probe("orders")).await.observation,
            Observation::Success
        );
        serving.store(false, Ordering::Release);
        assert_eq!(
            run(&client, &probe("orders")).await.observation,
            Observation::GrpcNotServing("NOT_SERVING")
        );
        assert_eq!(
            run(&client, &probe("nope")).await.observation,
            Observation::GrpcNotServing("NotFound")
        );
        assert_eq!(seen_values(&seen)[0].as_deref(), Some("ejected"));
        server.abort();
        let _ = server.await;
        client.forget_channel(addr);
        assert!(matches!(
            run(&client, &probe("orders")).await.observation,
            Observation::ConnectError | Observation::Timeout
        ));
    }
}
