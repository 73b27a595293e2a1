//! The operator's Kubernetes client, with timeouts so a hanging API server cannot stall a task
//! forever: a connect timeout, and a response timeout on every request that is not a watch.
//!
//! Watches are left alone on purpose: they idle for minutes between events, and kube's watcher
//! already reconnects one that stays silent past its server-side timeout. The leader election,
//! the reconciler's writes and the failover writer set their own, shorter timeouts on top.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::{Request, Uri};
use kube::client::ClientBuilder;
use kube::{Client, Config};

/// Default time to open a connection to the API server.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a request (other than a watch) may wait for the response to start. Long enough
/// for a page of a large list on a busy server; well above the operator's own write timeouts.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The client's timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// Time to open a connection.
    pub connect: Duration,
    /// Time until the response headers of a request that is not a watch.
    pub request: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The client could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("building the Kubernetes client: {0}")]
pub struct ClientError(#[from] kube::Error);

/// A client for `config` with `timeouts`.
pub fn build(mut config: Config, timeouts: ClientTimeouts) -> Result<Client, ClientError> {
    config.connect_timeout = Some(timeouts.connect);
    // A socket-level read timeout would also cut idle watches; the layer below skips them.
    config.read_timeout = None;
    // No retries inside the client: kube's default retries 429/503/504 for minutes, which would
    // turn a PodDisruptionBudget's refusal of an eviction (429) into a timeout and hold the
    // writer. Every caller already retries on its own schedule: the reconciler with backoff,
    // the failover writer on its next pass, each within a leadership-bounded deadline.
    config.default_retry = false;
    let builder = ClientBuilder::try_from(config)?;
    Ok(builder
        .with_layer(&RequestTimeoutLayer(timeouts.request))
        .build())
}

/// Whether the request is a watch (`?watch=true`), which may idle for minutes.
pub fn is_watch(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1"))
    })
}

/// The request did not get a response in time.
#[derive(Debug, thiserror::Error)]
#[error("no response from the API server within {0:?}")]
pub struct RequestTimedOut(pub Duration);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Applies [`RequestTimeout`].
#[derive(Debug, Clone, Copy)]
pub struct RequestTimeoutLayer(pub Duration);

impl<S> tower::Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            timeout: self.0,
        }
    }
}

/// Fails a request that is not a watch with [`RequestTimedOut`] when its response has not
/// started within the timeout.
#[derive(Debug, Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B> tower::Service<Request<B>> for RequestTimeout<S>
where
    S: tower::Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = (!is_watch(req.uri())).then_some(self.timeout);
        let call = self.inner.call(req);
        Box::pin(async move {
            match limit {
                None => call.await.map_err(Into::into),
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(r) => r.map_err(Into::into),
                    Err(_) => Err(Box::new(RequestTimedOut(t)) as BoxError),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, Service, ServiceExt};

    use super::*;

    fn hanging() -> impl Service<Request<()>, Response = (), Error = Infallible, Future: Send> {
        tower::service_fn(|_req: Request<()>| std::future::pending::<Result<(), Infallible>>())
    }

    /// A request that gets no answer fails after the timeout instead of waiting forever.
    #[tokio::test]
    async fn a_hanging_request_times_out() {
        let svc = RequestTimeoutLayer(Duration::from_millis(50)).layer(hanging());
        let req = Request::get("/api/v1/namespaces/a/pods/p")
            .body(())
            .unwrap_or_default();
        let err = svc.oneshot(req).await.err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("no response from the API server within 50ms")
        );
    }

    /// A watch is never cut by the request timeout (it idles by design).
    #[tokio::test]
    async fn a_watch_is_not_cut() {
        let svc = RequestTimeoutLayer(Duration::from_millis(20)).layer(hanging());
        let req = Request::get("/api/v1/pods?labelSelector=a&watch=true&timeoutSeconds=290")
            .body(())
            .unwrap_or_default();
        let watched = tokio::time::timeout(Duration::from_millis(200), svc.oneshot(req)).await;
        assert!(watched.is_err(), "the watch was answered or cut");
    }

    /// Only `watch=true`/`watch=1` parameters make a watch.
    #[test]
    fn watches_are_recognised() {
        let uri = |s: &str| s.parse::<Uri>().unwrap_or_default();
        assert!(is_watch(&uri("/api/v1/pods?watch=true")));
        assert!(is_watch(&uri("/api/v1/pods?a=b&watch=1")));
        assert!(!is_watch(&uri("/api/v1/pods?watch=false")));
        assert!(!is_watch(&uri("/api/v1/pods?allowWatchBookmarks=true")));
        assert!(!is_watch(&uri("/api/v1/pods")));
    }
}
