//! Serves gRPC (HTTP/2) and the kit's HTTP routes (`/healthz`, `/readyz`, `/metrics`,
//! `/admin/faults`, HTTP/1.1 or HTTP/2) on one port, and closes connections when told to.
//!
//! Requests with a `content-type: application/grpc*` go to the tonic routes, everything else
//! to the warp filter. Each connection task watches [`Traffic::subscribe`]: when the pod is
//! ejected, not ready or draining, the connection is shut down gracefully (HTTP/2 `GOAWAY`,
//! in-flight calls finish; idle HTTP/1.1 connections close), so clients reconnect through
//! the Service. A call answered in that state also closes its connection after the answer, so
//! a client that reconnects here before the endpoints moved leaves on its next call.
//!
//! Connection limits are the kit's ([`flotilla_kit::server::limits`], the same settings):
//! `MAX_CONNECTIONS` connections for any call, where a new client takes the place of the
//! connection idle longest; `HEALTH_CONNECTIONS` more, used only while every other one is busy,
//! that serve `grpc.health.v1.Health/Check` and the HTTP `/healthz`, `/readyz` and `/metrics`
//! and answer anything else `UNAVAILABLE` (gRPC) or 503 (HTTP) before closing. A connection
//! with no call in progress for `IDLE_TIMEOUT_MS` is closed, HTTP/2 connections are pinged
//! (`H2_KEEPALIVE_*`), HTTP/1.1 headers must arrive within `HEADER_READ_TIMEOUT_MS` and the
//! body of an HTTP request within `BODY_READ_TIMEOUT_MS`. gRPC request bodies have no read
//! deadline: a streaming call may legitimately send for as long as it lasts; keepalive pings
//! still find a peer that is gone. `Health/Watch` is not served on health connections, since
//! a watch would hold the slot for as long as it runs.
//!
//! Shutdown when `shutdown` resolves: readiness fails at once, open connections get `GOAWAY`,
//! the listener keeps accepting for `shutdown_delay` (connections opened meanwhile get
//! `GOAWAY` within [`CLOSE_INTERVAL`]), then closes; in-flight calls get `drain_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_kit::server::limits::{self, Claim, SlotKind, Slots, Tracked};
use flotilla_kit::server::{DrainOptions, PeerAddr, Stopped};
use flotilla_kit::Health;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceExt as _;
use tracing::Instrument as _;
use warp::filters::BoxedFilter;

use crate::traffic::{Traffic, CLOSE_INTERVAL};

/// Everything one server serves.
#[derive(Clone)]
pub struct App {
    /// gRPC services.
    pub grpc: Routes,
    /// HTTP routes (health, metrics, admin).
    pub http: BoxedFilter<(warp::reply::Response,)>,
    /// Drain state, set at shutdown.
    pub health: Health,
    /// Close requests to connections.
    pub traffic: Traffic,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// The gRPC method a health connection serves beside the kit's [`limits::HEALTH_PATHS`]: the
/// health check the kubelet's gRPC probe and Flotilla's prober call.
pub const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// Whether a request may be served on a health connection.
pub fn serves_on_health_slot<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    path == GRPC_HEALTH_CHECK || (!is_grpc(req) && limits::HEALTH_PATHS.contains(&path))
}

/// What every connection task shares besides the [`App`].
struct Conns {
    builder: auto::Builder<TokioExecutor>,
    slots: Arc<Slots>,
    body_read_timeout: Duration,
}

/// Whether a request is a gRPC call (by its content type).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

async fn dispatch(
    app: App,
    req: Request<Incoming>,
    body_read_timeout: Duration,
) -> Result<Response<Body>, Infallible> {
    if is_grpc(&req) {
        // One span per call, continuing the caller's trace from its `traceparent` metadata.
        let span = tracing::info_span!(
            "grpc",
            method = %req.uri().path(),
            trace_id = tracing::field::Empty,
        );
        flotilla_kit::telemetry::otlp::set_parent_from_headers(&span, req.headers());
        // The call's log lines name its trace.
        flotilla_kit::telemetry::otlp::record_trace_id(&span);
        app.grpc.oneshot(req).instrument(span).await
    } else {
        let http1 = limits::is_http1(&req);
        let (req, deadline) = limits::timed(req, body_read_timeout);
        let resp = warp::service(app.http).oneshot(req).await?;
        let resp = if deadline.passed() {
            limits::body_timed_out(http1)
        } else {
            resp
        };
        Ok(resp.map(Body::new))
    }
}

/// The answer to a call a health connection does not serve; the connection then closes.
fn over_capacity<B>(req: &Request<B>) -> Response<Body> {
    if is_grpc(req) {
        tonic::Status::unavailable("every connection slot is busy").into_http()
    } else {
        limits::over_capacity(limits::is_http1(req)).map(Body::new)
    }
}

/// Serves one accepted connection once it has its slot, until it ends; shuts it down
/// gracefully on a close request, after the idle timeout or to make room for a new one.
async fn serve_connection(
    app: App,
    conns: Arc<Conns>,
    stream: TcpStream,
    peer: SocketAddr,
    claim: Claim,
) {
    let slot = claim.slot().await;
    let _ = stream.set_nodelay(true);
    let mut close = app.traffic.subscribe();
    close.borrow_and_update();
    // Rung after a call answered while the pod should get no traffic, or refused on a health
    // connection.
    let answered_closing = Arc::new(Notify::new());
    let ring = answered_closing.clone();
    let on_slot = slot.handle();
    let body_read_timeout = conns.body_read_timeout;
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let active = on_slot.request();
        req.extensions_mut().insert(PeerAddr(peer));
        let refused = on_slot.kind() == SlotKind::Health && !serves_on_health_slot(&req);
        let (app, ring) = (app.clone(), ring.clone());
        async move {
            let traffic = app.traffic.clone();
            let resp = if refused {
                ring.notify_one();
                over_capacity(&req)
            } else {
                dispatch(app, req, body_read_timeout).await?
            };
            if traffic.closing() {
                ring.notify_one();
            }
            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, active)))
        }
    });
    let conn = conns.builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut shut = false;
    let mut limited = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            _ = close.changed(), if !shut => {
                shut = true;
                slot.leaving();
                conn.as_mut().graceful_shutdown();
            }
            () = answered_closing.notified(), if !shut => {
                shut = true;
                slot.leaving();
                conn.as_mut().graceful_shutdown();
            }
            reason = slot.close_requested(), if !limited => {
                tracing::debug!(?reason, %peer, "closing connection");
                limited = true;
                slot.leaving();
                if !shut {
                    shut = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = slot.grace_over(), if limited => {
                tracing::debug!(%peer, "dropping connection that did not close in time");
                return;
            }
        }
    }
}

async fn accept_until<S: Future<Output = ()>>(
    listener: &TcpListener,
    app: &App,
    conns: &Arc<Conns>,
    tasks: &mut JoinSet<()>,
    stop: S,
    close_while_accepting: bool,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(CLOSE_INTERVAL);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            _ = tick.tick(), if close_while_accepting => {
                app.traffic.close_all_now();
                continue;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            // Accept only when the connection can get a slot (free, or held by an idle
            // connection), so excess clients queue in the backlog.
            accepted = async {
                conns.slots.room().await;
                listener.accept().await
            } => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let claim = conns.slots.claim();
                tasks.spawn(serve_connection(
                    app.clone(),
                    conns.clone(),
                    stream,
                    peer,
                    claim,
                ));
            }
            Err(e) => {
                // Usually EMFILE or a reset before accept; back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains as `opts` says.
pub async fn serve<S>(listener: TcpListener, app: App, opts: DrainOptions, shutdown: S) -> Stopped
where
    S: Future<Output = ()> + Send,
{
    let conns = Arc::new(Conns {
        builder: limits::builder(&opts),
        slots: Slots::new(&opts),
        body_read_timeout: opts.body_read_timeout,
    });
    let mut tasks = JoinSet::new();
    accept_until(&listener, &app, &conns, &mut tasks, shutdown, false).await;
    app.health.start_draining();
    app.traffic.start_draining();
    tracing::info!(delay = ?opts.shutdown_delay, "shutdown requested: not ready, sending GOAWAY");
    accept_until(
        &listener,
        &app,
        &conns,
        &mut tasks,
        tokio::time::sleep(opts.shutdown_delay),
        true,
    )
    .await;
    drop(listener);
    app.traffic.close_all_now();
    let drained = tokio::time::timeout(opts.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_ok() {
        tracing::info!("all connections drained");
        Stopped::Drained
    } else {
        tracing::warn!("drain timeout expired, dropping remaining connections");
        tasks.abort_all();
        Stopped::DrainTimedOut
    }
}
