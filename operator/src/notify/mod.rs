//! Notifications: the operator's significant Events (failover, failback, flapping, a guarded
//! rollout's promotion or rollback) sent to a webhook, so an on-call channel hears of them
//! without watching Events.
//!
//! Where they come from: [`crate::events::EventSink`] hands [`Notifier::notify`] every Event it
//! creates. A repeat it only counts on an earlier Event (the series, see [`crate::events`]) is
//! not notified again, and a replica that does not lead publishes no Event, so it notifies
//! nothing. Only the reasons configured go out ([`DEFAULT_REASONS`] by default).
//!
//! Task layout: `notify` never waits. It puts the notification into a bounded queue with
//! `try_send`; when the queue is full the notification is dropped and counted
//! (`flotilla_notifications_total{result="dropped"}`), so a slow or failing receiver cannot slow
//! a reconcile or the failover writer. One task ([`Delivery`], `deliver.rs`) sends the queue in
//! order, each attempt within the timeout, and retries a failed attempt with backoff; a receiver
//! that refuses the request itself (a 4xx other than 408 and 429) is not asked again.
//!
//! The webhook URL is a credential (a Slack webhook URL is all it takes to post to a channel): it
//! is never logged, printed in `Debug` output or put into an error.

mod body;
mod deliver;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

pub use body::{Notification, Regarding};

use flotilla_crds::event_reasons;

/// The Event reasons notified unless others are configured: traffic moved to the fallback and
/// back, traffic held because it flipped too often, and a guarded rollout's end either way.
pub const DEFAULT_REASONS: [&str; 5] = [
    event_reasons::FAILED_OVER,
    event_reasons::FAILED_BACK,
    event_reasons::FLAPPING,
    event_reasons::PROMOTED,
    event_reasons::ROLLED_BACK,
];
/// Longest wait for the receiver's answer to one attempt (connecting included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts after the first one fails.
pub const DEFAULT_RETRIES: u32 = 3;
/// Wait before the first retry; it doubles with each further one (at most 30 s). With the
/// defaults a receiver that is down costs a notification 4 attempts of at most 5 s and 7 s of
/// waits, so a stretch of failovers during a receiver outage fills the queue rather than the
/// operator's memory.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// Notifications waiting for the delivery task. These Events are rare (a failover moves a whole
/// service); 256 holds every one of an incident that fails over a large fleet at once while the
/// receiver retries, and bounds memory when the receiver is gone for good.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;

/// The body a receiver is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Flotilla's JSON: reason, type, message, action, object, timestamp, reporting controller.
    #[default]
    Json,
    /// `{"text": "..."}`, one readable line, as Slack's incoming webhooks (and Mattermost's,
    /// and many chat bridges) take it.
    Slack,
}

/// Where the webhook URL comes from. `Debug` shows a file's path but never a URL.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlSource {
    /// The URL itself (from a flag or environment variable).
    Value(String),
    /// A file holding the URL (a mounted Secret key), read at start-up.
    File(PathBuf),
}

impl std::fmt::Debug for UrlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlSource::Value(_) => f.write_str("Value(<redacted>)"),
            UrlSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// One installation's webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// The URL notifications are POSTed to.
    pub url: UrlSource,
    /// The body's format.
    pub format: Format,
    /// Longest wait for the answer to one attempt.
    pub timeout: Duration,
    /// Attempts after a failed first one.
    pub retries: u32,
    /// Wait before the first retry (doubling).
    pub backoff: Duration,
    /// Event reasons that are notified.
    pub reasons: Vec<String>,
    /// Notifications that may wait for delivery; more are dropped.
    pub queue_capacity: usize,
}

impl WebhookConfig {
    /// A webhook at `url` with the defaults.
    pub fn new(url: UrlSource) -> Self {
        Self {
            url,
            format: Format::Json,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            backoff: DEFAULT_BACKOFF,
            reasons: DEFAULT_REASONS.iter().map(|r| (*r).to_owned()).collect(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }
}

/// Why notifications could not start. None of these carries the URL.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The file named for the URL could not be read.
    #[error("reading the notification webhook URL from {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The URL is not an absolute `http` or `https` URL.
    #[error("the notification webhook URL is not an absolute http(s) URL: {0}")]
    Url(String),
    /// The HTTP client (its TLS configuration) could not be built.
    #[error("building the notification HTTP client: {0}")]
    Client(String),
}

/// What became of a notification: the `result` label of `flotilla_notifications_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Sent,
    /// Every attempt failed, or the receiver refused it.
    Failed,
    /// The queue was full (or delivery had stopped); it was never sent.
    Dropped,
}

impl Outcome {
    /// The fixed label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
        }
    }
}

fn count(counter: &IntCounterVec, outcome: Outcome) {
    counter.with_label_values(&[outcome.as_str()]).inc();
}

/// The handle that queues notifications; clones share the queue. The default one is off and
/// does nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: mpsc::Sender<Notification>,
    reasons: Vec<String>,
    counter: IntCounterVec,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

impl Notifier {
    /// A notifier that sends nothing (no webhook configured).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Reads the URL, builds the HTTP client and starts the delivery task, counting outcomes in
    /// `counter` (label `result`). Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// The URL cannot be read or is not an http(s) URL, or the TLS setup fails.
    pub fn start(
        config: &WebhookConfig,
        counter: IntCounterVec,
    ) -> Result<(Self, Delivery), NotifyError> {
        let url = resolve_url(&config.url)?;
        let client = deliver::client()?;
        for o in [Outcome::Sent, Outcome::Failed, Outcome::Dropped] {
            // Exported at 0 from the start, so a rate() sees the first one.
            counter.with_label_values(&[o.as_str()]);
        }
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (stop, stopped) = oneshot::channel();
        let target = deliver::Target {
            client,
            url,
            format: config.format,
            timeout: config.timeout,
            retries: config.retries,
            backoff: config.backoff,
        };
        let task = tokio::spawn(deliver::run(rx, stopped, target, counter.clone()));
        let notifier = Self {
            inner: Some(Arc::new(Inner {
                tx,
                reasons: config.reasons.clone(),
                counter,
            })),
        };
        Ok((notifier, Delivery { task, stop }))
    }

    /// Whether a webhook is configured.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues a notification of `event` when its reason is one to notify. Never waits: a full
    /// queue drops it (counted, and logged).
    pub fn notify(&self, event: &Event) {
        let Some(inner) = &self.inner else { return };
        let reason = event.reason.as_deref().unwrap_or_default();
        if !inner.reasons.iter().any(|r| r == reason) {
            return;
        }
        let why = match inner.tx.try_send(Notification::from_event(event)) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                "the delivery queue is full (the webhook is slow or failing)"
            }
            Err(mpsc::error::TrySendError::Closed(_)) => "delivery has stopped (shutting down)",
        };
        count(&inner.counter, Outcome::Dropped);
        warn!(reason, "notification dropped: {why}");
    }
}

/// The running delivery task.
#[derive(Debug)]
pub struct Delivery {
    task: tokio::task::JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Delivery {
    /// Ends delivery at shutdown: what is queued now is still sent (the Event of a failover just
    /// before shutdown included) for at most `within`, then the task is stopped. Notifications
    /// queued afterwards are dropped.
    pub async fn finish(self, within: Duration) {
        let Delivery { mut task, stop } = self;
        // An error means the task has ended already.
        let _ = stop.send(());
        if tokio::time::timeout(within, &mut task).await.is_err() {
            warn!(
                ?within,
                "notifications still queued at shutdown were not delivered"
            );
            task.abort();
        }
    }
}

/// The URL from its source, checked to be an absolute http(s) URL.
fn resolve_url(source: &UrlSource) -> Result<hyper::Uri, NotifyError> {
    let text = match source {
        UrlSource::Value(v) => v.clone(),
        UrlSource::File(path) => {
            std::fs::read_to_string(path).map_err(|source| NotifyError::Read {
                path: path.display().to_string(),
                source,
            })?
        }
    };
    // A Secret written with `echo` ends with a newline.
    let url: hyper::Uri = text
        .trim()
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| NotifyError::Url(e.to_string()))?;
    match url.scheme_str() {
        Some("http" | "https") if url.host().is_some() => Ok(url),
        other => Err(NotifyError::Url(format!(
            "scheme {:?} without a host",
            other.unwrap_or_default()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL is checked at start-up and a file's trailing newline is ignored; errors never
    /// repeat the URL, which is a credential.
    #[test]
    fn urls_are_checked_without_being_shown() -> Result<(), Box<dyn std::error::Error>> {
        let secret = "https://hooks.example.com/services/T000/B000/s3cr3t";
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("url");
        std::fs::write(&file, format!("{secret}\n"))?;
        let url = resolve_url(&UrlSource::File(file))?;
        assert_eq!(url.to_string(), secret);
        for bad in [
            "s3cr3t-not-a-url",
            "ftp://s3cr3t.example.com/",
            "mailto:s3cr3t@x",
        ] {
            let err = resolve_url(&UrlSource::Value(bad.into()))
                .err()
                .map(|e| e.to_string())
                .ok_or(format!("{bad} was accepted"))?;
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        let missing = resolve_url(&UrlSource::File(dir.path().join("absent")));
        assert!(matches!(missing, Err(NotifyError::Read { .. })));
        let shown = format!("{:?}", WebhookConfig::new(UrlSource::Value(secret.into())));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        Ok(())
    }

    /// A disabled notifier is a no-op, and an enabled one queues only the configured reasons.
    #[tokio::test]
    async fn only_configured_reasons_are_queued() -> Result<(), Box<dyn std::error::Error>> {
        let disabled = Notifier::disabled();
        assert!(!disabled.is_enabled());
        disabled.notify(&Event::default());

        let counter = IntCounterVec::new(prometheus::Opts::new("n", "n"), &["result"])?;
        // A port nothing listens on: every attempt fails at once, and none is retried.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut config = WebhookConfig::new(UrlSource::Value(format!("http://{closed}/")));
        config.retries = 0;
        config.queue_capacity = 1;
        let (notifier, delivery) = Notifier::start(&config, counter.clone())?;
        let event = |reason: &str| Event {
            reason: Some(reason.into()),
            ..Event::default()
        };
        notifier.notify(&event("PodEjected"));
        notifier.notify(&event("RolloutStarted"));
        notifier.notify(&event(event_reasons::FAILED_OVER));
        delivery.finish(Duration::from_secs(30)).await;
        let get = |o: Outcome| counter.with_label_values(&[o.as_str()]).get();
        assert_eq!(
            (
                get(Outcome::Sent),
                get(Outcome::Failed),
                get(Outcome::Dropped)
            ),
            (0, 1, 0),
            "one notification (FailedOver), failed against a closed port"
        );
        Ok(())
    }
}
