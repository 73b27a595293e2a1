//! Binds nothing itself: serves a ready warp filter on a listener the caller bound, over
//! HTTP/1.1 and HTTP/2 (prior knowledge), adds the request id, bounds connections, honours the
//! traffic verdict and shuts down gracefully.
//!
//! Limits: at most `max_connections` connections are served at once (the rest wait in the
//! listen backlog, so a flood cannot exhaust memory or file descriptors), and an HTTP/1.1
//! client must send complete request headers within `header_read_timeout`.
//!
//! Persistent connections follow [`crate::traffic`]: while the instance is ejected, unready
//! or draining, HTTP/1.1 responses carry `Connection: close`, idle keep-alive connections are
//! closed at once and HTTP/2 connections get `GOAWAY`; requests in flight always finish.
//!
//! Shutdown sequence when `shutdown` resolves (SIGTERM/SIGINT in the binaries):
//! 1. readiness turns 503 at once ([`Health::start_draining`]) and persistent connections
//!    close as above;
//! 2. the server keeps accepting for `shutdown_delay`, so endpoint controllers and load
//!    balancers stop sending traffic before the port closes;
//! 3. the listener closes; in-flight requests run to completion for at most `drain_timeout`;
//! 4. [`serve`] returns and the binary exits 0.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::config::ServiceConfig;
use crate::health::Health;
use crate::telemetry::REQUEST_ID_HEADER;
use crate::traffic::Traffic;

/// Longest incoming request id we keep; longer or non-printable ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Concurrent HTTP/2 streams per connection.
const MAX_H2_STREAMS: u32 = 128;

/// Timing of the shutdown sequence and the server's limits.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// Keep accepting (while not-ready) this long after the signal.
    pub shutdown_delay: Duration,
    /// Upper bound for in-flight requests to finish once the listener is closed.
    pub drain_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Deadline for a client to send complete HTTP/1.1 request headers.
    pub header_read_timeout: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self {
            shutdown_delay: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(20),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// How the server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every connection finished within the drain timeout.
    Drained,
    /// The drain timeout expired with connections still open; they were dropped.
    DrainTimedOut,
}

/// What every connection task shares.
struct Shared<Svc> {
    service: Svc,
    builder: auto::Builder<TokioExecutor>,
    traffic: Traffic,
    slots: Arc<Semaphore>,
}

/// Serves `filter` on `listener` until `shutdown` resolves, then runs the shutdown sequence.
pub async fn serve<F, S>(
    listener: TcpListener,
    filter: F,
    health: Health,
    opts: DrainOptions,
    shutdown: S,
) -> Stopped
where
    F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
    S: Future<Output = ()> + Send,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS);
    let max =
        u32::try_from(opts.max_connections.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let shared = Arc::new(Shared {
        service: TowerToHyperService::new(warp::service(filter)),
        builder,
        traffic: health.traffic().clone(),
        slots: Arc::new(Semaphore::new(max as usize)),
    });

    accept_until(&listener, &shared, shutdown).await;
    health.start_draining();
    tracing::info!(
        delay = ?opts.shutdown_delay,
        "shutdown requested: readiness now failing, still accepting during the delay"
    );
    accept_until(&listener, &shared, tokio::time::sleep(opts.shutdown_delay)).await;
    drop(listener);
    tracing::info!(timeout = ?opts.drain_timeout, "listener closed, draining in-flight requests");
    // Every connection holds one slot until it ends: all slots back = all connections done.
    let slots = shared.slots.clone();
    let drained = tokio::time::timeout(opts.drain_timeout, slots.acquire_many(max)).await;
    match drained {
        Ok(_) => {
            tracing::info!("all connections drained");
            Stopped::Drained
        }
        Err(_) => {
            tracing::warn!("drain timeout expired, dropping remaining connections");
            Stopped::DrainTimedOut
        }
    }
}

async fn accept_until<Svc, S>(listener: &TcpListener, shared: &Arc<Shared<Svc>>, stop: S)
where
    Svc: hyper::service::Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    Svc::Future: Send + 'static,
    S: Future<Output = ()>,
{
    tokio::pin!(stop);
    loop {
        // Wait for a free slot before accepting, so excess clients queue in the backlog.
        let permit = tokio::select! {
            () = &mut stop => return,
            permit = shared.slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually EMFILE or a connection reset before accept; back off briefly
                // instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(shared.clone(), stream, peer, permit));
    }
}

/// Serves one connection; closes it gracefully (idle HTTP/1.1 at once, HTTP/2 `GOAWAY`) as
/// soon as the instance starts closing persistent connections.
async fn serve_connection<Svc>(
    shared: Arc<Shared<Svc>>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    _slot: OwnedSemaphorePermit,
) where
    Svc: hyper::service::Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    Svc::Future: Send + 'static,
{
    let _open = shared.traffic.connection_opened();
    let (service, traffic) = (shared.service.clone(), shared.traffic.clone());
    let first_request = Arc::new(FirstRequest::default());
    let seen = first_request.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        seen.arrived();
        req.extensions_mut().insert(PeerAddr(peer));
        let (service, traffic, seen) = (service.clone(), traffic.clone(), seen.clone());
        async move {
            let resp = with_request_id(service, traffic.clone(), req).await;
            // A request answered while closing closes its connection too (HTTP/1.1 through
            // `Connection: close`, HTTP/2 here with `GOAWAY`): a client that reconnected before
            // the endpoints moved leaves again on its next request, not a probe period later.
            if traffic.closing() {
                seen.answered_while_closing();
            }
            resp
        }
    });
    // Two ways to close: a change to "closing" while this connection is open, and any request
    // answered while closing (so a connection opened while closing — a client reconnecting
    // before the endpoints moved — is closed after its first answer; HTTP/1.1 responses then
    // also carry `Connection: close`). A connection that has not carried a request yet is
    // closed only once its first request arrives and is answered: a graceful shutdown before
    // then would drop a request whose bytes may already be on the way.
    let mut closing = shared.traffic.subscribe();
    closing.mark_unchanged();
    let conn = shared.builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut told = false;
    let mut pending = false;
    let mut shut = false;
    loop {
        let close_now = tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = closing.changed(), if !told => match changed {
                Err(_) => {
                    told = true;
                    false
                }
                Ok(()) => {
                    told = *closing.borrow_and_update();
                    told
                }
            },
            () = first_request.wait(), if pending => {
                pending = false;
                shared.traffic.closing()
            }
            () = first_request.closing_wait() => true,
        };
        // A connection that has not carried a request yet waits for its first one.
        if close_now && !first_request.seen() {
            pending = true;
        } else if close_now && !shut {
            shut = true;
            conn.as_mut().graceful_shutdown();
        }
    }
}

/// Whether a connection has carried a request yet, and a wake-up when the first one arrives;
/// also a wake-up when a request was answered while the instance closes connections.
#[derive(Debug, Default)]
struct FirstRequest {
    seen: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
    closing: tokio::sync::Notify,
}

impl FirstRequest {
    fn arrived(&self) {
        if !self.seen.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    fn seen(&self) -> bool {
        self.seen.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn wait(&self) {
        self.notify.notified().await;
    }

    fn answered_while_closing(&self) {
        self.closing.notify_one();
    }

    async fn closing_wait(&self) {
        self.closing.notified().await;
    }
}

async fn with_request_id<Svc>(
    service: Svc,
    traffic: Traffic,
    mut req: Request<Incoming>,
) -> Result<Response, Infallible>
where
    Svc: hyper::service::Service<Request<Incoming>, Response = Response, Error = Infallible>,
{
    let id = ensure_request_id(req.headers_mut());
    let http1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
    let mut resp = service.call(req).await?;
    resp.headers_mut().insert(REQUEST_ID_HEADER, id);
    // Checked after handling, so the readiness probe that carried `ejected` already closes.
    if http1 && traffic.closing() {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

/// The client address of the connection a request came in on, in the request's extensions
/// (`warp::ext::optional::<PeerAddr>()` reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Keeps a usable incoming request id or replaces it with a fresh UUID; returns the id.
pub fn ensure_request_id(headers: &mut http::HeaderMap) -> HeaderValue {
    let usable = headers.get(REQUEST_ID_HEADER).filter(|v| {
        !v.is_empty()
            && v.len() <= MAX_REQUEST_ID_LEN
            && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    });
    if let Some(v) = usable {
        return v.clone();
    }
    let fresh = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    headers.insert(REQUEST_ID_HEADER, fresh.clone());
    fresh
}

/// A server running on a background task, stopped through [`Running::stop`]. Tests and
/// benchmarks use it to run a service in-process over real HTTP.
#[derive(Debug)]
pub struct Running {
    /// The address actually bound.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Stopped>,
}

impl Running {
    /// Serves `filter` on `listener` in a background task.
    pub fn start<F>(
        listener: TcpListener,
        filter: F,
        health: Health,
        opts: DrainOptions,
    ) -> std::io::Result<Self>
    where
        F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
    {
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, filter, health, opts, async move {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            stop: Some(tx),
            task,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Triggers the shutdown sequence without waiting for it.
    pub fn trigger_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers the shutdown sequence and waits for it to finish.
    pub async fn stop(mut self) -> Result<Stopped, tokio::task::JoinError> {
        self.trigger_stop();
        self.task.await
    }

    /// Waits for a shutdown triggered earlier to finish.
    pub async fn finished(self) -> Result<Stopped, tokio::task::JoinError> {
        self.task.await
    }
}

impl From<&ServiceConfig> for DrainOptions {
    fn from(config: &ServiceConfig) -> Self {
        DrainOptions {
            shutdown_delay: config.shutdown_delay,
            drain_timeout: config.drain_timeout,
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
        }
    }
}

/// What a service binary does once it has bound: keeps the liveness heartbeat ticking and serves
/// `filter` until SIGTERM or SIGINT, then drains as `config` says.
pub async fn serve_until_signal<F>(
    listener: TcpListener,
    filter: F,
    health: Health,
    config: &ServiceConfig,
) -> Stopped
where
    F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
{
    let _heartbeat = health.spawn_heartbeat();
    serve(
        listener,
        filter,
        health,
        DrainOptions::from(config),
        shutdown_signal(),
    )
    .await
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_kept_or_generated() {
        // A sane incoming id is echoed; a missing or hostile one is replaced.
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(ensure_request_id(&mut h), "abc-123");

        let mut h = http::HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(h.get(REQUEST_ID_HEADER), Some(&id));

        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert_ne!(ensure_request_id(&mut h), "has space");
    }
}
