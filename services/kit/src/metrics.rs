//! Prometheus metrics: per-route HTTP counters and latency histograms recorded by a warp
//! wrapper, process metrics, and the `/metrics` endpoint.
//!
//! Labels come only from fixed sets: the method through a `match` onto `&'static str`, the
//! route from the template the handler tagged its response with, the status from its three
//! digits. A raw path never becomes a label.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply as _};

use crate::reply::{self, route_of, tag};

/// Registering or encoding metrics failed.
pub type MetricsError = prometheus::Error;

/// Route template of the metrics endpoint.
pub const METRICS_ROUTE: &str = "/metrics";

/// The HTTP metrics of one service instance, in their own registry (cheap to clone).
#[derive(Clone)]
pub struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

impl HttpMetrics {
    /// Creates the registry with `http_requests_total`, `http_request_duration_seconds` and,
    /// on Linux, the standard `process_*` metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by route template and status.",
            ),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from receiving a request to producing its response, by route template.",
            ),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            requests,
            duration,
        })
    }

    /// The registry, for services that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one answered request.
    pub fn observe(&self, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
        let method = method_label(method);
        self.requests
            .with_label_values(&[method, route, status.as_str()])
            .inc();
        self.duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }

    /// Everything in the registry, in the Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// `GET /metrics`.
    pub fn route(
        &self,
    ) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
        let metrics = self.clone();
        warp::path!("metrics").and(warp::get()).map(move || {
            let resp = match metrics.render() {
                Ok(text) => warp::reply::with_header(text, "content-type", prometheus::TEXT_FORMAT)
                    .into_response(),
                Err(e) => reply::error(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string()),
            };
            tag(METRICS_ROUTE, resp)
        })
    }
}

/// Wraps `inner` so every request it answers is counted and timed under the route template
/// its response was tagged with.
pub fn instrument<F>(
    metrics: HttpMetrics,
    inner: F,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(inner)
        .map(move |start: Instant, method: Method, resp: Response| {
            metrics.observe(&method, route_of(&resp), resp.status(), start.elapsed());
            resp
        })
}

/// The method label: a fixed set, so odd methods cannot grow the label space.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_methods_share_one_label() {
        // Label cardinality stays bounded whatever method a client invents.
        let m = Method::from_bytes(b"BREW").expect("method");
        assert_eq!(method_label(&m), "OTHER");
        assert_eq!(method_label(&Method::GET), "GET");
    }

    #[tokio::test]
    async fn wrapper_counts_by_template() {
        // Two different raw paths through one template produce one series with count 2.
        let metrics = HttpMetrics::new().expect("registry");
        let inner = warp::path!("items" / u64)
            .map(|_id| tag("/items/{id}", "ok"))
            .recover(reply::recover)
            .unify();
        let app = instrument(metrics.clone(), inner);
        for p in ["/items/1", "/items/2", "/nope"] {
            let _ = warp::test::request().path(p).reply(&app).await;
        }
        let text = metrics.render().expect("render");
        assert!(text
            .contains(r#"http_requests_total{method="GET",route="/items/{id}",status="200"} 2"#));
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#)
        );
        assert!(!text.contains("/items/1"));
    }
}
