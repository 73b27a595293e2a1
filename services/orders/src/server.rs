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
//! Shutdown when `shutdown` resolves: readiness fails at once, open connections get `GOAWAY`,
//! the listener keeps accepting for `shutdown_delay` (connections opened meanwhile get
//! `GOAWAY` within [`CLOSE_INTERVAL`]), then closes; in-flight calls get `drain_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use flotilla_kit::server::{DrainOptions, PeerAddr, Stopped};
use flotilla_kit::Health;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceExt as _;
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

/// Whether a request is a gRPC call (by its content type).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

async fn dispatch(app: App, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if is_grpc(&req) {
        app.grpc.oneshot(req).await
    } else {
        let resp = warp::service(app.http).oneshot(req).await?;
        Ok(resp.map(Body::new))
    }
}

/// Serves one accepted connection until it ends, shutting it down gracefully on a close request.
async fn serve_connection(app: App, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut close = app.traffic.subscribe();
    close.borrow_and_update();
    // Rung after a call answered while the pod should get no traffic.
    let answered_closing = Arc::new(Notify::new());
    let ring = answered_closing.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let (app, ring) = (app.clone(), ring.clone());
        async move {
            let traffic = app.traffic.clone();
            let resp = dispatch(app, req).await;
            if traffic.closing() {
                ring.notify_one();
            }
            resp
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = close.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = answered_closing.notified() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

async fn accept_until<S: Future<Output = ()>>(
    listener: &TcpListener,
    app: &App,
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
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tasks.spawn(serve_connection(app.clone(), stream, peer));
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
    let mut tasks = JoinSet::new();
    accept_until(&listener, &app, &mut tasks, shutdown, false).await;
    app.health.start_draining();
    app.traffic.start_draining();
    tracing::info!(delay = ?opts.shutdown_delay, "shutdown requested: not ready, sending GOAWAY");
    accept_until(
        &listener,
        &app,
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
