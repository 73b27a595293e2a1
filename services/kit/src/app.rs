//! Assembles one service's warp filter: its API routes plus `/healthz`, `/readyz`, `/metrics`
//! and (with `ADMIN_TOKEN`) `/admin/faults`, with rejection handling, the metrics wrapper,
//! the API request counts of the readiness watch, an access log line and the per-request span. Pure composition: binds and spawns nothing.

use std::time::Instant;

use warp::filters::BoxedFilter;
use warp::http::Method;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::faults::{Faults, ADMIN_ROUTE};
use crate::health::Health;
use crate::metrics::{instrument, HttpMetrics, METRICS_ROUTE};
use crate::reply::{self, route_of};
use crate::telemetry::request_span;

/// The shared state of one service instance.
#[derive(Debug, Clone)]
pub struct Kit {
    /// Readiness checks and drain state.
    pub health: Health,
    /// Runtime fault injection state.
    pub faults: Faults,
    /// HTTP metrics; `None` leaves the metrics wrapper and `/metrics` out (benchmarks only).
    pub metrics: Option<HttpMetrics>,
    /// `ADMIN_TOKEN`; `None` leaves `/admin/faults` unmounted.
    pub admin_token: Option<String>,
}

impl Kit {
    /// A kit with metrics on.
    /// The traffic verdict counter is registered with the HTTP metrics.
    pub fn new(health: Health, admin_token: Option<String>) -> Result<Self, prometheus::Error> {
        let metrics = HttpMetrics::new()?;
        metrics
            .registry()
            .register(Box::new(health.traffic().verdict_check().counter()))?;
        Ok(Self {
            health,
            faults: Faults::new(),
            metrics: Some(metrics),
            admin_token,
        })
    }

    /// The complete filter for a service whose own routes are `api`. API routes should put
    /// [`Faults::gate`] after their path and method so injected errors and latency reach them.
    pub fn filter<A>(&self, api: A) -> BoxedFilter<(Response,)>
    where
        A: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
    {
        let mut routes: BoxedFilter<(Response,)> = self.health.routes(self.faults.clone()).boxed();
        if let Some(m) = &self.metrics {
            routes = routes.or(m.route()).unify().boxed();
        }
        if let Some(token) = &self.admin_token {
            routes = routes
                .or(self.faults.admin_routes(token.clone()))
                .unify()
                .boxed();
        }
        let health = self.health.clone();
        let handled =
            routes
                .or(api)
                .unify()
                .recover(reply::recover)
                .unify()
                .map(move |resp: Response| {
                    if !OWN_ROUTES.contains(&route_of(&resp)) {
                        health.request_counts().record(resp.status().as_u16());
                    }
                    resp
                });
        let measured: BoxedFilter<(Response,)> = match &self.metrics {
            Some(m) => instrument(m.clone(), handled).boxed(),
            None => handled.boxed(),
        };
        access_log(measured)
            .with(warp::trace(request_span))
            .map(warp::Reply::into_response)
            .boxed()
    }
}

/// The kit's own routes: the prober's, the kubelet's and the operator's requests, which the
/// readiness watch's API request counts leave out.
const OWN_ROUTES: [&str; 4] = ["/healthz", "/readyz", METRICS_ROUTE, ADMIN_ROUTE];

/// Logs one line per request (status, route template, duration) inside the request span.
fn access_log<F>(
    inner: F,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static
where
    F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
{
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(inner)
        .map(|start: Instant, method: Method, resp: Response| {
            tracing::info!(
                %method,
                status = resp.status().as_u16(),
                route = route_of(&resp),
                elapsed_ms = start.elapsed().as_secs_f64() * 1e3,
                "request finished"
            );
            resp
        })
}
