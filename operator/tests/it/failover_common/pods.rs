//! Test pods for the failover tests: small HTTP servers on loopback addresses whose readiness,
//! latency and metrics the test controls, counting requests and connections.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Bytes;
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Shared knobs of one test pod.
#[derive(Debug, Default)]
pub struct Knobs {
    pub status: AtomicU16,
    pub delay_ms: AtomicU64,
    pub noisy: AtomicBool,
    /// Plain readiness requests (probes), watches not included.
    pub readiness_requests: AtomicU64,
    /// Readiness watches opened.
    pub watch_requests: AtomicU64,
    pub connections: AtomicU64,
    pub metrics: Mutex<String>,
    /// Answer readiness watches (`Flotilla-Watch`) by streaming the status every heartbeat.
    pub watch: AtomicBool,
    /// The traffic verdict (`flotilla-traffic`) the last probe carried.
    pub verdict: Mutex<Option<String>>,
}

/// One HTTP server standing in for a pod.
#[derive(Debug)]
pub struct FakePod {
    pub addr: SocketAddr,
    pub knobs: Arc<Knobs>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePod {
    pub fn set_status(&self, s: u16) {
        self.knobs.status.store(s, Ordering::SeqCst);
    }
    pub fn set_delay(&self, d: Duration) {
        self.knobs.delay_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
    pub fn set_noisy(&self, on: bool) {
        self.knobs.noisy.store(on, Ordering::SeqCst);
    }
    pub fn set_metrics(&self, text: &str) {
        if let Ok(mut m) = self.knobs.metrics.lock() {
            *m = text.to_owned();
        }
    }
    /// Serves readiness watches from now on.
    pub fn set_watch(&self, on: bool) {
        self.knobs.watch.store(on, Ordering::SeqCst);
    }
    /// Plain readiness requests (probes) answered so far, watches not included.
    pub fn readiness_requests(&self) -> u64 {
        self.knobs.readiness_requests.load(Ordering::SeqCst)
    }
    /// Readiness watches opened so far.
    pub fn watch_requests(&self) -> u64 {
        self.knobs.watch_requests.load(Ordering::SeqCst)
    }
    /// The traffic verdict the last probe carried, if any.
    pub fn verdict(&self) -> Option<String> {
        self.knobs.verdict.lock().ok()?.clone()
    }
    pub fn connections(&self) -> u64 {
        self.knobs.connections.load(Ordering::SeqCst)
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// How long one watch response lasts, as the kit's.
const WATCH_LIFETIME: Duration = Duration::from_secs(30);

/// A readiness watch answer: the status line now and every `heartbeat` (changes show at the
/// next heartbeat), for [`WATCH_LIFETIME`].
fn watch_reply(knobs: Arc<Knobs>, heartbeat: Duration) -> Response<Body> {
    let line = |k: &Knobs| {
        if (200..400).contains(&k.status.load(Ordering::SeqCst)) {
            Bytes::from_static(b"ready\n")
        } else {
            Bytes::from_static(b"not_ready fake\n")
        }
    };
    let lines = (WATCH_LIFETIME.as_millis() / heartbeat.as_millis().max(1)) as u64;
    // An interval's first tick is at once: the first line goes out with the head.
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures::stream::unfold((knobs, 0u64, tick), move |(k, i, mut tick)| async move {
        if i >= lines {
            return None;
        }
        tick.tick().await;
        let frame = Frame::data(line(&k));
        Some((Ok::<_, Infallible>(frame), (k, i + 1, tick)))
    });
    let body = StreamBody::new(stream);
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(
        flotilla_crds::traffic::WATCH_HEADER,
        hyper::header::HeaderValue::from_str(&format!("heartbeat={}", heartbeat.as_millis()))
            .unwrap_or(hyper::header::HeaderValue::from_static("heartbeat=0")),
    );
    r
}

async fn handle(
    knobs: Arc<Knobs>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let reply = |status: u16, body: String| {
        let mut r = Response::new(BodyExt::boxed(Full::new(Bytes::from(body))));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
        Ok(r)
    };
    let heartbeat = req
        .headers()
        .get(flotilla_crds::traffic::WATCH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("heartbeat="))
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|ms| *ms > 0);
    match path.as_str() {
        "/readyz" if knobs.watch.load(Ordering::SeqCst) && heartbeat.is_some() => {
            knobs.watch_requests.fetch_add(1, Ordering::SeqCst);
            let beat = Duration::from_millis(heartbeat.unwrap_or(100));
            Ok(watch_reply(knobs, beat))
        }
        "/readyz" => {
            let n = knobs.readiness_requests.fetch_add(1, Ordering::SeqCst);
            let verdict = req
                .headers()
                .get(flotilla_crds::traffic::HEADER)
                .and_then(|v| v.to_str().ok());
            if let (Some(v), Ok(mut last)) = (verdict, knobs.verdict.lock()) {
                *last = Some(v.to_owned());
            }
            let delay = knobs.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                // The latency the test asked for is the behaviour under test.
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let status = if knobs.noisy.load(Ordering::SeqCst) {
                if n.is_multiple_of(2) {
                    503
                } else {
                    200
                }
            } else {
                knobs.status.load(Ordering::SeqCst)
            };
            reply(status, "ready\n".to_owned())
        }
        "/metrics" => {
            let text = knobs.metrics.lock().map(|m| m.clone()).unwrap_or_default();
            reply(200, text)
        }
        _ => reply(404, String::new()),
    }
}

async fn serve(listener: TcpListener, knobs: Arc<Knobs>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        knobs.connections.fetch_add(1, Ordering::SeqCst);
        let knobs = knobs.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(knobs.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Starts `n` pods on distinct loopback addresses `127.<a>.<b>.k` that share one port (as the
/// pods of one service share a container port). Retries with another port if one is taken.
pub async fn start_group(a: u8, b: u8, n: u8) -> anyhow::Result<Vec<FakePod>> {
    'attempt: for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::new(127, a, b, 1), 0)).await?;
        let port = first.local_addr()?.port();
        let mut listeners = vec![first];
        for k in 2..=n {
            match TcpListener::bind((Ipv4Addr::new(127, a, b, k), port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'attempt,
            }
        }
        let mut pods = Vec::new();
        for l in listeners {
            let addr = l.local_addr()?;
            let knobs = Arc::new(Knobs::default());
            knobs.status.store(200, Ordering::SeqCst);
            let task = tokio::spawn(serve(l, knobs.clone()));
            pods.push(FakePod { addr, knobs, task });
        }
        return Ok(pods);
    }
    anyhow::bail!("no common free port on 127.{a}.{b}.x")
}

/// The IP of a pod as the inventory wants it.
pub fn ip(p: &FakePod) -> IpAddr {
    p.addr.ip()
}
