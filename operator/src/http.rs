//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the controller and
//! the prober are making progress, see [`crate::health`]) and `/readyz` (caches synced, or
//! standing by for the lease). Routes are kept apart from
//! binding so tests drive them in-process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use warp::http::StatusCode;
use warp::Filter;

use crate::health::Health;
use crate::metrics::Metrics;

/// The metrics/health server could not bind its address.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {source}")]
pub struct BindError {
    /// Requested address.
    pub addr: SocketAddr,
    /// The socket error.
    #[source]
    pub source: std::io::Error,
}

/// Shared readiness flag: true once the controller's caches have synced, or while this replica
/// waits for the lease (a standby is healthy and ready to take over).
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Reads the flag.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the endpoints report.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Served at `/metrics`.
    pub metrics: Metrics,
    /// Served at `/readyz`.
    pub ready: Readiness,
    /// Served at `/healthz`.
    pub health: Health,
}

/// The routes, without binding.
pub fn routes(
    endpoints: Endpoints,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let Endpoints {
        metrics,
        ready,
        health,
    } = endpoints;
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(
            metrics.render(),
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
    });
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(move || match health.check() {
            Ok(()) => warp::reply::with_status("ok".to_string(), StatusCode::OK),
            Err(reason) => warp::reply::with_status(reason, StatusCode::SERVICE_UNAVAILABLE),
        });
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        if ready.get() {
            warp::reply::with_status("ok", StatusCode::OK)
        } else {
            warp::reply::with_status("caches not synced", StatusCode::SERVICE_UNAVAILABLE)
        }
    });
    metrics.or(healthz).or(readyz)
}

/// Binds `addr` and serves the routes until `shutdown` completes. Returns the bound address and
/// the server future.
pub async fn serve(
    addr: SocketAddr,
    endpoints: Endpoints,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), BindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    let server = warp::serve(routes(endpoints))
        .incoming(listener)
        .graceful(shutdown)
        .run();
    Ok((bound, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /readyz follows the flag, /healthz follows the health record, /metrics serves the text
    /// format.
    #[tokio::test]
    async fn endpoints() -> anyhow::Result<()> {
        let m = Metrics::new()?;
        m.leader.set(1);
        let ready = Readiness::default();
        let health = Health::new(std::time::Duration::ZERO);
        let r = routes(Endpoints {
            metrics: m,
            ready: ready.clone(),
            health: health.clone(),
        });
        let res = warp::test::request().path("/readyz").reply(&r).await;
        assert_eq!(res.status(), 503);
        ready.set(true);
        let res = warp::test::request().path("/readyz").reply(&r).await;
        assert_eq!(res.status(), 200);
        let res = warp::test::request().path("/healthz").reply(&r).await;
        assert_eq!(res.status(), 200);
        // A reconcile that does not finish within the (zero) stall limit makes it unhealthy.
        let stuck = health.reconcile_started();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let res = warp::test::request().path("/healthz").reply(&r).await;
        assert_eq!(res.status(), 503);
        let body = String::from_utf8_lossy(res.body()).into_owned();
        assert!(body.starts_with("controller stalled"), "{body}");
        drop(stuck);
        let res = warp::test::request().path("/healthz").reply(&r).await;
        assert_eq!(res.status(), 200);
        let res = warp::test::request().path("/metrics").reply(&r).await;
        assert_eq!(res.status(), 200);
        assert!(String::from_utf8_lossy(res.body()).contains("flotilla_leader 1"));
        let res = warp::test::request().path("/nope").reply(&r).await;
        assert_eq!(res.status(), 404);
        Ok(())
    }
}
