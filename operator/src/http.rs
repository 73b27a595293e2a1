//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive) and `/readyz` (caches synced, or standing by for the lease). Routes are kept apart from
//! binding so tests drive them in-process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use warp::http::StatusCode;
use warp::Filter;

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

/// The routes, without binding.
pub fn routes(
    metrics: Metrics,
    ready: Readiness,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(
            metrics.render(),
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
    });
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok", StatusCode::OK));
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
    metrics: Metrics,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), BindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    let server = warp::serve(routes(metrics, ready))
        .incoming(listener)
        .graceful(shutdown)
        .run();
    Ok((bound, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /readyz follows the flag, /healthz is always ok, /metrics serves the text format.
    #[tokio::test]
    async fn endpoints() -> anyhow::Result<()> {
        let m = Metrics::new()?;
        m.leader.set(1);
        let ready = Readiness::default();
        let r = routes(m, ready.clone());
        let res = warp::test::request().path("/readyz").reply(&r).await;
        assert_eq!(res.status(), 503);
        ready.set(true);
        let res = warp::test::request().path("/readyz").reply(&r).await;
        assert_eq!(res.status(), 200);
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
