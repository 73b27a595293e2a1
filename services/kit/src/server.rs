//! Binds nothing itself: serves a ready warp filter on a listener the caller bound, over
//! HTTP/1.1 and HTTP/2 (prior knowledge), adds the request id, bounds connections, honours the
//! traffic verdict and shuts down gracefully.
//!
//! Limits (see [`limits`] for how slots are shared out), each a setting in
//! [`crate::config`]:
//! - `max_connections` (`MAX_CONNECTIONS`, 1,024) connections serve any request. When all are
//!   taken, a new client takes the place of the connection idle longest; only when every one
//!   is busy do clients wait in the listen backlog, so a flood cannot exhaust memory or file
//!   descriptors.
//! - `health_connections` (`HEALTH_CONNECTIONS`, 8) more connections serve only `/healthz`,
//!   `/readyz` and `/metrics` once every traffic connection is busy, so the kubelet's probes
//!   and the scraper still answer then; other requests on them get 503 and a close. Liveness,
//!   readiness and startup probes, Flotilla's prober and a scraper take one each at a time;
//!   8 leaves room for a retry of each.
//! - `header_read_timeout` (`HEADER_READ_TIMEOUT_MS`, 10 s): an HTTP/1.1 client must send
//!   complete request headers in this time, also when it reuses a keep-alive connection.
//!   Ten seconds is generous for headers on any network and short enough that slow-header
//!   clients cannot pile up.
//! - `idle_timeout` (`IDLE_TIMEOUT_MS`, 60 s): a connection with no request in progress is
//!   closed (HTTP/2 with `GOAWAY`). Long enough that a client calling every few seconds keeps
//!   its connection, short enough that connections of clients that went quiet are released
//!   within a minute; under pressure idle connections make room at once anyway.
//! - `body_read_timeout` (`BODY_READ_TIMEOUT_MS`, 10 s): a request body must arrive within
//!   this time of its headers, or the request is answered 408 (and an HTTP/1.1 connection
//!   closed). The services' bodies are at most 16 KiB, so this is a floor of under 2 KB/s.
//! - `h2_keepalive_interval`/`h2_keepalive_timeout` (`H2_KEEPALIVE_INTERVAL_MS`, 20 s;
//!   `H2_KEEPALIVE_TIMEOUT_MS`, 10 s): an HTTP/2 connection that has been silent for the
//!   interval is pinged, and closed when the ping is not answered in time, so a peer that
//!   vanished (node lost, no FIN or RST) frees its slot within half a minute even with a
//!   stream open. Far below the idle timeouts of cloud load balancers (about 4 minutes and
//!   up), so the pings also keep legitimate long calls from being cut by them.
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
//! 3. the listener closes and every connection is shut down gracefully, including those that
//!    have not carried a request yet: idle ones close at once, in-flight requests run to
//!    completion for at most `drain_timeout`;
//! 4. [`serve`] returns and the binary exits 0.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::config::ServiceConfig;
use crate::health::Health;
pub use crate::reply::PeerAddr;
use crate::telemetry::REQUEST_ID_HEADER;
use crate::traffic::Traffic;

pub mod limits;

use limits::{Claim, SlotKind, Slots, TimedBody, Tracked};

/// Longest incoming request id we keep; longer or non-printable ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Timing of the shutdown sequence and the server's limits.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// Keep accepting (while not-ready) this long after the signal.
    pub shutdown_delay: Duration,
    /// Upper bound for in-flight requests to finish once the listener is closed.
    pub drain_timeout: Duration,
    /// Most connections serving any request at once.
    pub max_connections: usize,
    /// Further connections that serve only health and metrics, used while every traffic
    /// connection is busy.
    pub health_connections: usize,
    /// Deadline for a client to send complete HTTP/1.1 request headers.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress this long is closed.
    pub idle_timeout: Duration,
    /// Deadline for a request body, from the request's headers.
    pub body_read_timeout: Duration,
    /// HTTP/2 ping interval on a silent connection.
    pub h2_keepalive_interval: Duration,
    /// How long an HTTP/2 ping may go unanswered before the connection is closed.
    pub h2_keepalive_timeout: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self {
            shutdown_delay: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(20),
            max_connections: 1024,
            health_connections: 8,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(10),
            h2_keepalive_interval: Duration::from_secs(20),
            h2_keepalive_timeout: Duration::from_secs(10),
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
    slots: Arc<Slots>,
    body_read_timeout: Duration,
    /// Turns true when the listener has closed: every connection shuts down now.
    listener_closed: tokio::sync::watch::Sender<bool>,
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
    let shared = Arc::new(Shared {
        service: TowerToHyperService::new(warp::service(filter)),
        builder: limits::builder(&opts),
        traffic: health.traffic().clone(),
        slots: Slots::new(&opts),
        body_read_timeout: opts.body_read_timeout,
        listener_closed: tokio::sync::watch::Sender::new(false),
    });

    accept_until(&listener, &shared, shutdown).await;
    health.start_draining();
    tracing::info!(
        delay = ?opts.shutdown_delay,
        "shutdown requested: readiness now failing, still accepting during the delay"
    );
    accept_until(&listener, &shared, tokio::time::sleep(opts.shutdown_delay)).await;
    drop(listener);
    shared.listener_closed.send_replace(true);
    tracing::info!(timeout = ?opts.drain_timeout, "listener closed, draining in-flight requests");
    // Every connection holds one slot until it ends: all slots back = all connections done.
    let drained = tokio::time::timeout(opts.drain_timeout, shared.slots.all_returned()).await;
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
    Svc: hyper::service::Service<
            Request<TimedBody<Incoming>>,
            Response = Response,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    Svc::Future: Send + 'static,
    S: Future<Output = ()>,
{
    tokio::pin!(stop);
    loop {
        // Accept only when the connection can get a slot (free, or held by an idle
        // connection), so excess clients queue in the backlog.
        tokio::select! {
            () = &mut stop => return,
            () = shared.slots.room() => {}
        }
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
        let claim = shared.slots.claim();
        tokio::spawn(serve_connection(shared.clone(), stream, peer, claim));
    }
}

/// Serves one connection once it has its slot; closes it gracefully (idle HTTP/1.1 at once,
/// HTTP/2 `GOAWAY`) as soon as the instance starts closing persistent connections, when it
/// has been idle too long, when a new connection needs its slot, or when the listener closes.
async fn serve_connection<Svc>(
    shared: Arc<Shared<Svc>>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    claim: Claim,
) where
    Svc: hyper::service::Service<
            Request<TimedBody<Incoming>>,
            Response = Response,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    Svc::Future: Send + 'static,
{
    let mut listener_closed = shared.listener_closed.subscribe();
    let slot = claim.slot().await;
    let _open = shared.traffic.connection_opened();
    let (service, traffic) = (shared.service.clone(), shared.traffic.clone());
    let body_read_timeout = shared.body_read_timeout;
    let first_request = Arc::new(FirstRequest::default());
    let seen = first_request.clone();
    let on_slot = slot.handle();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        seen.arrived();
        let active = on_slot.request();
        req.extensions_mut().insert(PeerAddr(peer));
        let http1 = limits::is_http1(&req);
        let refused =
            on_slot.kind() == SlotKind::Health && !limits::HEALTH_PATHS.contains(&req.uri().path());
        let (req, deadline) = limits::timed(req, body_read_timeout);
        let (service, traffic, seen) = (service.clone(), traffic.clone(), seen.clone());
        async move {
            let resp = if refused {
                // Traffic on a health connection: answered, and the connection closes.
                seen.answered_while_closing();
                let mut resp = limits::over_capacity(http1);
                let mut req = req;
                let id = ensure_request_id(req.headers_mut());
                resp.headers_mut().insert(REQUEST_ID_HEADER, id);
                resp
            } else {
                let resp = with_request_id(service, traffic.clone(), req).await?;
                if deadline.passed() {
                    with_id_of(&resp, limits::body_timed_out(http1))
                } else {
                    resp
                }
            };
            // A request answered while closing closes its connection too (HTTP/1.1 through
            // `Connection: close`, HTTP/2 here with `GOAWAY`): a client that reconnected before
            // the endpoints moved leaves again on its next request, not a probe period later.
            if traffic.closing() {
                seen.answered_while_closing();
            }
            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, active)))
        }
    });
    // Two ways to close: a change to "closing" while this connection is open, and any request
    // answered while closing (so a connection opened while closing — a client reconnecting
    // before the endpoints moved — is closed after its first answer; HTTP/1.1 responses then
    // also carry `Connection: close`). While the listener is open, a connection that has not
    // carried a request yet is closed only once its first request arrives and is answered: its
    // client connected to send one, and closing before then could drop it on the way.
    // The limits close too: after the idle timeout or to make room for a new connection. The
    // connection was idle then, so it is shut down at once and dropped after a grace period if
    // its peer does not let go.
    // Once the listener has closed, nothing waits for a first request any more: the server
    // waits for every connection, so one that never sends (a client pool's spare connection,
    // or one opened while the instance was already closing, which sees no change when draining
    // starts) would hold the shutdown for the whole drain timeout. Every connection is shut
    // down gracefully then, and hyper keeps the rule for those without a request: HTTP/1.1
    // closes at once only when no byte of a request has been read (otherwise the request is
    // read, answered with `Connection: close` and the connection closed); HTTP/2 sends
    // `GOAWAY` and a ping and serves the streams the peer opened before it saw them; a
    // connection whose protocol is not known yet (hyper-util still reading the HTTP/2
    // preface) closes, which can only cut a client that sent a part of its first 24 bytes and
    // stalled. Bytes still on the wire are the race every server closing idle connections
    // has; `biased` below drives the connection first, so what has reached the socket is
    // read before the shutdown.
    let mut closing = shared.traffic.subscribe();
    closing.mark_unchanged();
    let conn = shared.builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut told = false;
    let mut pending = false;
    let mut shut = false;
    let mut limited = false;
    loop {
        let close_now = tokio::select! {
            biased;
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
            reason = slot.close_requested(), if !limited => {
                tracing::debug!(?reason, %peer, "closing connection");
                limited = true;
                slot.leaving();
                if !shut {
                    shut = true;
                    conn.as_mut().graceful_shutdown();
                }
                false
            }
            () = slot.grace_over(), if limited => {
                tracing::debug!(%peer, "dropping connection that did not close in time");
                return;
            }
            _ = listener_closed.wait_for(|closed| *closed), if !shut => {
                shut = true;
                slot.leaving();
                conn.as_mut().graceful_shutdown();
                false
            }
        };
        // A connection that has not carried a request yet waits for its first one.
        if close_now && !first_request.seen() {
            pending = true;
        } else if close_now && !shut {
            shut = true;
            slot.leaving();
            conn.as_mut().graceful_shutdown();
        }
    }
}

/// `resp` carrying the request id of `answered`, the response it replaces.
fn with_id_of(answered: &Response, mut resp: Response) -> Response {
    if let Some(id) = answered.headers().get(REQUEST_ID_HEADER) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
    }
    resp
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

async fn with_request_id<Svc, B>(
    service: Svc,
    traffic: Traffic,
    mut req: Request<B>,
) -> Result<Response, Infallible>
where
    Svc: hyper::service::Service<Request<B>, Response = Response, Error = Infallible>,
{
    let id = ensure_request_id(req.headers_mut());
    let http1 = limits::is_http1(&req);
    let mut resp = service.call(req).await?;
    resp.headers_mut().insert(REQUEST_ID_HEADER, id);
    // Checked after handling, so the readiness probe that carried `ejected` already closes.
    if http1 && traffic.closing() {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

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
            health_connections: config.health_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            body_read_timeout: config.body_read_timeout,
            h2_keepalive_interval: config.h2_keepalive_interval,
            h2_keepalive_timeout: config.h2_keepalive_timeout,
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
