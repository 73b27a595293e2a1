//! One probe of one pod: the readiness request (an HTTP GET, or `grpc.health.v1.Health/Check`
//! for a gRPC service) and the optional metrics scrape, each bounded by the probe timeout, over
//! shared clients that reuse connections. Each readiness request carries the pod's traffic
//! verdict (`flotilla-traffic: serving|ejected`) with its signature when the engine sends one
//! (only while this replica leads), so a pod that honours the contract closes its persistent
//! connections while it is out of the traffic.
//!
//! No decisions here: a probe returns what it saw; the engine judges it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_crds::traffic;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use hyper::Uri;

use super::error_rate;
use super::pod_health::Observation;
use super::scrape::{Rejected, Scanner, ScrapeLimits, Scraped};

/// Largest readiness body read so the connection can be reused.
const MAX_READINESS_BYTES: usize = 64 << 10;

/// gRPC channels kept (one per pod address); the cache is emptied when it grows past this, so
/// churned pods cannot grow it without bound.
const MAX_GRPC_CHANNELS: usize = 4096;

mod http1;

/// One pod's kept-alive HTTP/1.1 connection. The engine's entry for the pod owns it between
/// probes and lends it to each probe, so steady probing costs one request on an open connection:
/// no pool lookup, no lock, no connect. Any failure drops it; the next probe connects afresh.
pub type PodConn = http1::Conn;

/// What an HTTP probe of one pod sends, built once per pod address and paths so a probe parses
/// and formats nothing: the request heads up to their last header line.
#[derive(Debug)]
pub struct HttpPaths {
    // `GET <readiness path> HTTP/1.1` and `Host`, without the verdict header and final CRLF.
    readiness: Vec<u8>,
    // The whole metrics request head.
    metrics: Vec<u8>,
}

impl HttpPaths {
    /// `None` when a path is not a valid origin-form request target (the probe then fails to
    /// connect, as a request that cannot be sent).
    pub fn new(addr: SocketAddr, readiness_path: &str, metrics_path: &str) -> Option<Self> {
        let head = |path: &str| -> Option<Vec<u8>> {
            // The URI grammar admits no whitespace or control characters, so a path cannot
            // break the request head.
            let uri = Uri::try_from(path).ok()?;
            if uri.scheme().is_some() || !path.starts_with('/') {
                return None;
            }
            Some(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n").into_bytes())
        };
        let mut metrics = head(metrics_path)?;
        metrics.extend_from_slice(b"\r\n");
        Some(Self {
            readiness: head(readiness_path)?,
            metrics,
        })
    }

    /// The readiness watch request: the readiness GET asking to stay open, report each change
    /// and repeat the current state every `heartbeat`; with `errors_above` (the service's
    /// `maxErrorRate`), also to send a line at once when its API requests fail that much.
    pub fn watch(&self, heartbeat: Duration, errors_above: Option<f64>) -> Vec<u8> {
        let mut req = self.readiness.clone();
        let mut head = format!(
            "{}: heartbeat={}\r\n",
            traffic::WATCH_HEADER,
            heartbeat.as_millis()
        );
        if let Some(above) = errors_above {
            let _ = write!(
                head,
                "{}: above={above} requests={}\r\n",
                traffic::WATCH_ERRORS_HEADER,
                super::error_spans::MIN_SPAN_REQUESTS
            );
        }
        head.push_str("\r\n");
        req.extend_from_slice(head.as_bytes());
        req
    }

    /// The readiness request head, carrying the signed verdict when one is sent.
    fn readiness(&self, signed: Option<(&str, &str)>) -> Vec<u8> {
        let mut req = Vec::with_capacity(self.readiness.len() + 200);
        req.extend_from_slice(&self.readiness);
        if let Some((verdict, signature)) = signed {
            for (name, value) in [
                (traffic::HEADER, verdict),
                (traffic::SIGNATURE_HEADER, signature),
            ] {
                req.extend_from_slice(name.as_bytes());
                req.extend_from_slice(b": ");
                req.extend_from_slice(value.as_bytes());
                req.extend_from_slice(b"\r\n");
            }
        }
        req.extend_from_slice(b"\r\n");
        req
    }
}

/// The shared clients of the prober: gRPC channels per pod (HTTP probes use the pod's own
/// connection, see [`PodConn`]).
#[derive(Clone, Debug, Default)]
pub struct ProbeClient {
    // One lazily connected HTTP/2 channel per pod; dropped after a failed probe so the next one
    // starts from a fresh connection.
    grpc: Arc<Mutex<HashMap<SocketAddr, Channel>>>,
}

/// What one probe run asks for.
#[derive(Debug, Clone, Copy)]
pub struct ProbeTarget<'a> {
    /// The pod's address.
    pub addr: SocketAddr,
    /// The HTTP request targets (readiness, unused for gRPC, and metrics); `None` if they
    /// could not be built.
    pub http: Option<&'a HttpPaths>,
    /// `Some(service name)` for a gRPC health check instead of the HTTP GET.
    pub grpc_service: Option<&'a str>,
    /// Check readiness; `false` for a pod that is only scraped (a service probed only for its
    /// traffic figures): the report's observation is then `Success` without a request.
    pub readiness: bool,
    /// Scrape the metrics path after a successful readiness check (after any check when the
    /// verdict is `ejected`).
    pub scrape: bool,
    /// Also read the API traffic and its latency histogram in the scrape.
    pub traffic: bool,
    /// Bound of each request.
    pub timeout: Duration,
    /// Caps of the metrics scrape.
    pub limits: ScrapeLimits,
    /// The pod's traffic verdict (`traffic::SERVING` / `traffic::EJECTED`), if known.
    pub verdict: Option<&'static str>,
    /// The verdict's signature; the verdict is sent only with one (only the leader signs).
    pub signature: Option<&'a str>,
}

impl ProbeTarget<'_> {
    /// The verdict and its signature, when both are there to send.
    fn signed(&self) -> Option<(&str, &str)> {
        self.verdict.zip(self.signature)
    }
}

/// Sends `request` on the pod's connection, opening one if there is none or it cannot carry
/// another request (closed by the pod, or `Connection: close` last time), and returns the
/// response head; the caller reads the body to its end before the next request and clears
/// `conn` on any failure. A kept connection that turns out closed before any response byte is
/// replaced once, as a pool retries a request that never reached the server.
async fn send(
    conn: &mut Option<PodConn>,
    addr: SocketAddr,
    request: &[u8],
) -> Result<http1::Head, ()> {
    if let Some(mut c) = conn.take().filter(PodConn::is_reusable) {
        match c.send(request).await {
            Ok(head) => {
                *conn = Some(c);
                return Ok(head);
            }
            Err(http1::Error::Closed | http1::Error::Io) => {}
            Err(_) => return Err(()),
        }
    }
    let mut c = PodConn::connect(addr).await.map_err(|_| ())?;
    let head = c.send(request).await.map_err(|_| ())?;
    *conn = Some(c);
    Ok(head)
}

impl ProbeClient {
    /// A client with no gRPC channels yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests the readiness path on the pod's connection; 2xx and 3xx are success, as for
    /// kubelet HTTP probes.
    pub async fn readiness(
        conn: &mut Option<PodConn>,
        addr: SocketAddr,
        http: &HttpPaths,
        timeout: Duration,
        signed: Option<(&str, &str)>,
    ) -> Observation {
        let get = async {
            let request = http.readiness(signed);
            let head = send(conn, addr, &request).await?;
            let c = conn.as_mut().ok_or(())?;
            let mut seen = 0usize;
            c.body(&head, |data| {
                seen += data.len();
                if seen > MAX_READINESS_BYTES {
                    return Err(());
                }
                Ok(())
            })
            .await
            .map_err(|_| ())?;
            Ok::<_, ()>(head.status)
        };
        let result = tokio::time::timeout(timeout, get).await;
        if !matches!(result, Ok(Ok(_))) || !conn.as_ref().is_some_and(PodConn::completed) {
            *conn = None;
        }
        match result {
            Err(_) => Observation::Timeout,
            Ok(Err(())) => Observation::ConnectError,
            Ok(Ok(status)) if (200..400).contains(&status) => Observation::Success,
            Ok(Ok(status)) => Observation::BadStatus(status),
        }
    }
    pub(super) fn channel(&self, addr: SocketAddr) -> Result<Channel, ()> {
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

    /// A channel of its own for one readiness watch, outside the probes' cache: its
    /// connection carries the `Health/Watch` stream only, and HTTP/2 PINGs every `heartbeat`
    /// of quiet (also while no call is open), each to be answered within `timeout`, give it
    /// the liveness bound an HTTP watch gets from its heartbeat lines. A pod that hangs leaves
    /// a PING unanswered and the connection is closed under the stream.
    pub(super) fn watch_channel(
        addr: SocketAddr,
        heartbeat: Duration,
        timeout: Duration,
    ) -> Result<Channel, ()> {
        Ok(Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| ())?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(heartbeat)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true)
            .connect_lazy())
    }

    pub(super) fn forget_channel(&self, addr: SocketAddr) {
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
        signed: Option<(&str, &str)>,
    ) -> Observation {
        let Ok(channel) = self.channel(addr) else {
            return Observation::ConnectError;
        };
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        if let Some((verdict, signature)) = signed {
            // Both are ASCII: a fixed word and `v1.<hex>.<digits>.<base64url>`.
            if let (Ok(v), Ok(s)) = (verdict.parse(), signature.parse()) {
                let md = req.metadata_mut();
                md.insert(traffic::HEADER, v);
                md.insert(traffic::SIGNATURE_HEADER, s);
            }
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
            Ok(Ok(resp)) => serving_observation(resp.get_ref().status()),
        };
        if matches!(obs, Observation::Timeout | Observation::ConnectError) {
            self.forget_channel(addr);
        }
        obs
    }

    /// Scrapes the metrics path on the pod's connection for request counts (gRPC codes for a
    /// gRPC service, HTTP statuses otherwise), reading the body as it streams in within
    /// `limits`; any failure is "no data" (with the reason), never a verdict. A body that went
    /// over a cap is dropped unread, and its connection with it.
    pub async fn scrape(
        conn: &mut Option<PodConn>,
        addr: SocketAddr,
        http: &HttpPaths,
        timeout: Duration,
        limits: ScrapeLimits,
        (grpc, traffic): (bool, bool),
    ) -> Result<Scraped, Rejected> {
        let scan = async {
            let head = send(conn, addr, &http.metrics)
                .await
                .map_err(|()| Rejected::Transport)?;
            if head.status != 200 {
                return Err(Rejected::BadStatus);
            }
            let c = conn.as_mut().ok_or(Rejected::Transport)?;
            let mut scanner = if grpc {
                Scanner::grpc(limits)
            } else {
                Scanner::new(limits)
            };
            if traffic {
                scanner = scanner.with_traffic();
            }
            // The scanner's verdict is kept aside: the body callback can only refuse.
            let mut rejected = None;
            let read = c
                .body(&head, |data| {
                    scanner.feed(data).map_err(|r| {
                        rejected = Some(r);
                    })
                })
                .await;
            match (read, rejected) {
                (Ok(()), _) => scanner.finish(),
                (Err(_), Some(r)) => Err(r),
                (Err(_), None) => Err(Rejected::Transport),
            }
        };
        let result = tokio::time::timeout(timeout, scan)
            .await
            .map_err(|_| Rejected::Timeout)
            .and_then(|r| r);
        if result.is_err() || !conn.as_ref().is_some_and(PodConn::completed) {
            *conn = None;
        }
        result
    }
}

/// What a gRPC health answer says: only `SERVING` is success.
pub fn serving_observation(status: ServingStatus) -> Observation {
    match status {
        ServingStatus::Serving => Observation::Success,
        ServingStatus::NotServing => Observation::GrpcNotServing("NOT_SERVING"),
        ServingStatus::ServiceUnknown => Observation::GrpcNotServing("SERVICE_UNKNOWN"),
        ServingStatus::Unknown => Observation::GrpcNotServing("UNKNOWN"),
    }
}

/// What one probe run reports back to the engine.
#[derive(Debug)]
pub struct ProbeReport {
    /// The readiness result.
    pub observation: Observation,
    /// How long the readiness request took.
    pub latency: Duration,
    /// When it finished.
    pub at: Instant,
    /// The scrape, if one was asked for: `Ok` with what it read (counts `None`: the counter is
    /// absent), `Err` that the scrape gave no data and why.
    pub scrape: Option<Result<Scraped, Rejected>>,
    /// The address probed and its connection, still open, for the next probe.
    pub conn: (SocketAddr, Option<PodConn>),
}

/// Runs one probe (and a scrape when asked) on the pod's connection `conn`, which comes back
/// in the report. Bounded by at most twice `target.timeout`.
pub async fn run(
    client: &ProbeClient,
    target: &ProbeTarget<'_>,
    mut conn: Option<PodConn>,
) -> ProbeReport {
    let start = Instant::now();
    let observation = match (target.grpc_service, target.http) {
        _ if !target.readiness => Observation::Success,
        (Some(service), _) => {
            client
                .grpc_readiness(target.addr, service, target.timeout, target.signed())
                .await
        }
        (None, Some(http)) => {
            ProbeClient::readiness(
                &mut conn,
                target.addr,
                http,
                target.timeout,
                target.signed(),
            )
            .await
        }
        (None, None) => Observation::ConnectError,
    };
    let latency = start.elapsed();
    // A failing pod is not scraped (its counters decide nothing), unless it is ejected: then
    // the scrape shows whether clients still reach it (sticky connections).
    let ejected = target.verdict == Some(flotilla_crds::traffic::EJECTED);
    let scrape = match target.http {
        Some(http) if target.scrape && (observation.is_success() || ejected) => Some(
            ProbeClient::scrape(
                &mut conn,
                target.addr,
                http,
                target.timeout,
                target.limits,
                (target.grpc_service.is_some(), target.traffic),
            )
            .await,
        ),
        None if target.scrape && (observation.is_success() || ejected) => {
            Some(Err(Rejected::Transport))
        }
        _ => None,
    };
    ProbeReport {
        observation,
        latency,
        at: Instant::now(),
        scrape,
        conn: (target.addr, conn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    type Seen = Arc<Mutex<Vec<Option<String>>>>;

    fn seen_values(seen: &Seen) -> Vec<Option<String>> {
        match seen.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A plain HTTP server answering 200 that records each request's verdict header and counts
    /// the connections it accepted.
    async fn http_server(seen: Seen) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::AcqRel);
                let seen = seen.clone();
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let v = req
                            .headers()
                            .get(traffic::HEADER)
                            .zip(req.headers().get(traffic::SIGNATURE_HEADER))
                            .and_then(|(v, s)| {
                                Some(format!("{} {}", v.to_str().ok()?, s.to_str().ok()?))
                            });
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
        (addr, accepted)
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
            let md = request.metadata();
            let v = md
                .get(traffic::HEADER)
                .zip(md.get(traffic::SIGNATURE_HEADER))
                .and_then(|(v, s)| Some(format!("{} {}", v.to_str().ok()?, s.to_str().ok()?)));
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
        http: &'a HttpPaths,
        grpc: Option<&'a str>,
        verdict: &'static str,
    ) -> ProbeTarget<'a> {
        ProbeTarget {
            addr,
            http: Some(http),
            grpc_service: grpc,
            readiness: true,
            scrape: false,
            traffic: false,
            timeout: Duration::from_secs(10),
            limits: ScrapeLimits::default(),
            verdict: Some(verdict),
            signature: Some("sig"),
        }
    }

    #[tokio::test]
    async fn http_probe_carries_the_signed_verdict_on_one_kept_alive_connection() {
        // Every readiness GET of the leader tells the pod whether it is in the traffic, with
        // the signature that makes it count; without a signature (a standby) nothing is said;
        // steady probing reuses the connection the report hands back.
        let seen = Seen::default();
        let (addr, accepted) = http_server(seen.clone()).await;
        let client = ProbeClient::new();
        let http = HttpPaths::new(addr, "/readyz", "/metrics").expect("paths");
        let rep = run(&client, &target(addr, &http, None, traffic::EJECTED), None).await;
        assert_eq!(rep.observation, Observation::Success);
        let (_, conn) = rep.conn;
        assert!(conn.is_some(), "the connection comes back open");
        let rep = run(&client, &target(addr, &http, None, traffic::SERVING), conn).await;
        assert_eq!(rep.observation, Observation::Success);
        let unsigned = ProbeTarget {
            signature: None,
            ..target(addr, &http, None, traffic::EJECTED)
        };
        let (_, conn) = rep.conn;
        let rep = run(&client, &unsigned, conn).await;
        assert_eq!(rep.observation, Observation::Success);
        assert_eq!(
            seen_values(&seen),
            vec![
                Some("ejected sig".to_owned()),
                Some("serving sig".to_owned()),
                None
            ],
            "a verdict goes out only with its signature"
        );
        assert_eq!(accepted.load(Ordering::Acquire), 1);
    }

    #[test]
    fn a_watch_asks_for_early_lines_only_with_an_error_rate_to_judge() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        let paths = HttpPaths::new(addr, "/readyz", "/metrics").expect("paths");
        let text = |errors| {
            String::from_utf8(paths.watch(Duration::from_millis(250), errors)).expect("ascii")
        };
        assert_eq!(
            text(Some(0.25)),
            "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nflotilla-watch: heartbeat=250\r\n\
             flotilla-watch-errors: above=0.25 requests=10\r\n\r\n"
        );
        assert_eq!(
            text(None),
            "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nflotilla-watch: heartbeat=250\r\n\r\n"
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
        let http = HttpPaths::new(addr, "/readyz", "/metrics").expect("paths");
        let probe = |service| target(addr, &http, Some(service), traffic::EJECTED);
        assert_eq!(
            run(&client, &probe("orders"), None).await.observation,
            Observation::Success
        );
        serving.store(false, Ordering::Release);
        assert_eq!(
            run(&client, &probe("orders"), None).await.observation,
            Observation::GrpcNotServing("NOT_SERVING")
        );
        assert_eq!(
            run(&client, &probe("nope"), None).await.observation,
            Observation::GrpcNotServing("NotFound")
        );
        assert_eq!(seen_values(&seen)[0].as_deref(), Some("ejected sig"));
        server.abort();
        let _ = server.await;
        client.forget_channel(addr);
        assert!(matches!(
            run(&client, &probe("orders"), None).await.observation,
            Observation::ConnectError | Observation::Timeout
        ));
    }
}
