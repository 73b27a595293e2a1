//! Test pods for the failover tests: small HTTP servers on loopback addresses whose readiness,
//! latency and metrics the test controls, counting requests and connections.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Shared knobs of one test pod.
#[derive(Debug, Default)]
pub struct Knobs {
    pub status: AtomicU16,
    pub delay_ms: AtomicU64,
    pub noisy: AtomicBool,
    pub readiness_requests: AtomicU64,
    pub connections: AtomicU64,
    pub metrics: Mutex<String>,
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
    pub fn readiness_requests(&self) -> u64 {
        self.knobs.readiness_requests.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> u64 {
        self.knobs.connections.load(Ordering::SeqCst)
    }
}

async fn handle(
    knobs: Arc<Knobs>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let reply = |status: u16, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
        Ok(r)
    };
    match path.as_str() {
        "/readyz" => {
            let n = knobs.readiness_requests.fetch_add(1, Ordering::SeqCst);
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
