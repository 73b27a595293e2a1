//! The delivery task: takes notifications off the queue one at a time and POSTs each to the
//! webhook, every attempt within the timeout, retrying with doubling waits. One task, in order:
//! notifications are rare, and a receiver that is down should see a short burst of retries, not
//! one per queued notification at once.
//!
//! The only place the webhook URL is used; errors are logged without it.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounterVec;
use rustls_platform_verifier::BuilderVerifierExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{count, Format, Notification, NotifyError, Outcome};

/// Longest wait between two attempts, however many retries are configured.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The webhook's HTTP client.
pub(super) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where and how notifications are sent.
pub(super) struct Target {
    pub client: HttpClient,
    pub url: Uri,
    pub format: Format,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
}

/// The HTTP client: TLS with the ring provider (the one the operator's Kubernetes client uses)
/// and the system's root certificates; plain http allowed for in-cluster receivers; HTTP/1.1; no
/// redirects followed (a webhook answers where it is asked, and a redirect would carry the body
/// elsewhere). Each attempt's timeout is set where it is sent.
pub(super) fn client() -> Result<HttpClient, NotifyError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| NotifyError::Client(e.to_string()))?
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// Delivers until every [`super::Notifier`] is gone, or `stop` fires; then delivers what is
/// still queued and ends.
pub(super) async fn run(
    mut queue: mpsc::Receiver<Notification>,
    mut stop: oneshot::Receiver<()>,
    target: Target,
    counter: IntCounterVec,
) {
    let mut stopping = false;
    loop {
        let next = if stopping {
            queue.try_recv().ok()
        } else {
            tokio::select! {
                n = queue.recv() => n,
                _ = &mut stop => {
                    stopping = true;
                    queue.try_recv().ok()
                }
            }
        };
        let Some(notification) = next else { break };
        let outcome = target.deliver(&notification).await;
        count(&counter, outcome);
    }
}

/// Why one attempt failed, and whether another may succeed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Failure {
    /// Worth another attempt (no answer, a 5xx, 408 or 429).
    pub retry: bool,
    /// What happened, without the URL.
    pub why: String,
}

impl Target {
    /// Sends one notification with its retries: [`Outcome::Sent`] or [`Outcome::Failed`].
    async fn deliver(&self, n: &Notification) -> Outcome {
        let body = n.body(self.format);
        let mut attempt: u32 = 0;
        loop {
            match self.attempt(&body).await {
                Ok(()) => {
                    debug!(reason = %n.reason, namespace = %n.object.namespace,
                           name = %n.object.name, "notification sent");
                    return Outcome::Sent;
                }
                Err(f) if f.retry && attempt < self.retries => {
                    let wait = backoff(self.backoff, attempt);
                    debug!(reason = %n.reason, error = %f.why, ?wait, "notification attempt failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(f) => {
                    warn!(reason = %n.reason, namespace = %n.object.namespace,
                          name = %n.object.name, attempts = attempt + 1, error = %f.why,
                          "notification not delivered");
                    return Outcome::Failed;
                }
            }
        }
    }

    async fn attempt(&self, body: &serde_json::Value) -> Result<(), Failure> {
        let request = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("flotilla-operator/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Failure {
                retry: false,
                why: format!("cannot build the request: {e}"),
            })?;
        let send = self.client.request(request);
        match tokio::time::timeout(self.timeout, send).await {
            Err(_) => Err(Failure {
                retry: true,
                why: format!("no answer within {:?}", self.timeout),
            }),
            Ok(Err(e)) => Err(Failure {
                retry: true,
                why: error_chain(&e),
            }),
            Ok(Ok(answer)) => judge(answer.status()),
        }
    }
}

/// A 2xx is delivered. A 5xx, 408 (timeout) and 429 (rate limited) may pass later; any other
/// answer (a wrong or revoked URL: 400, 403, 404, 410; a redirect) will not.
pub(super) fn judge(status: StatusCode) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    let retry = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    Err(Failure {
        retry,
        why: format!("the receiver answered {status}"),
    })
}

/// The wait before retry number `attempt + 1`: `base` doubled per earlier retry, at most
/// [`MAX_BACKOFF`].
pub(super) fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX_BACKOFF)
}

/// An error and its sources on one line (the client's own message alone is "client error
/// (Connect)"). hyper's errors do not carry the URL.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only answers that may change are retried: a 5xx, 408 and 429, never a refusal of the
    /// request itself (a revoked Slack URL answers 404 or 410 forever).
    #[test]
    fn retries_only_what_may_pass_later() {
        let retry = |code: u16| {
            StatusCode::from_u16(code)
                .map(|s| judge(s).err().map(|f| f.retry))
                .ok()
                .flatten()
        };
        assert_eq!(retry(200), None);
        assert_eq!(retry(204), None);
        for code in [500, 502, 503, 504, 408, 429] {
            assert_eq!(retry(code), Some(true), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 410, 413] {
            assert_eq!(retry(code), Some(false), "{code}");
        }
    }

    /// An `https` webhook is spoken to in TLS (the client's TLS setup is wired in and does not
    /// depend on a process-wide crypto provider): the first bytes on the wire are a TLS
    /// handshake record.
    #[tokio::test]
    async fn https_webhooks_get_a_tls_handshake() -> Result<(), Box<dyn std::error::Error>> {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url: Uri = format!("https://{}/hook", listener.local_addr()?).parse()?;
        let first_bytes = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await?;
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).await?;
            Ok::<_, std::io::Error>(head)
        });
        let target = Target {
            client: client()?,
            url,
            format: Format::Json,
            timeout: Duration::from_secs(30),
            retries: 0,
            backoff: Duration::ZERO,
        };
        // The listener never answers the handshake: the attempt fails once it is dropped.
        let attempt = tokio::spawn(async move { target.attempt(&serde_json::json!({})).await });
        let head = first_bytes.await??;
        assert_eq!(
            head,
            [0x16, 0x03],
            "a TLS handshake record (type 22, version 3.x)"
        );
        assert!(attempt.await?.is_err());
        Ok(())
    }

    /// The wait doubles from the base and stops at the cap, however many retries are asked.
    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_secs(1);
        let waits: Vec<u64> = (0..7).map(|a| backoff(base, a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(base, u32::MAX), MAX_BACKOFF);
    }
}
