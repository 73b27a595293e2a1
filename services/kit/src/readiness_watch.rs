//! The readiness watch: `/readyz` held open, reporting each change of readiness the moment the
//! instance knows it, so Flotilla's prober does not wait for its next probe.
//!
//! Protocol (see `services/README.md`): a `GET /readyz` with the request header
//! `Flotilla-Watch: heartbeat=<ms>` is answered at once with the usual status (200 or 503),
//! the same header (the heartbeat the instance uses, `0` for none) and a chunked
//! `text/plain` body of lines, one per report: `ready` or `not_ready <check>,<check>`. The
//! first line is the readiness now; then a line on every change, and the current line again
//! every heartbeat when one was asked for. The response ends after [`LIFETIME`], or right
//! after a `not_ready shutdown` line when the instance starts draining, and the prober asks
//! again. A server that does not know the header answers the ordinary probe, which tells the
//! prober to probe it every period instead.
//!
//! One evaluator per instance runs the readiness checks while anyone watches: at once when
//! faults change or draining starts, and every [`RECHECK`] for dependency checks (database,
//! upstream services). Watchers share its result.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use crate::faults::Faults;
use crate::health::{Health, ReadinessReport};

/// The request and response header of the watch (header names are case-insensitive).
pub const WATCH_HEADER: &str = "flotilla-watch";

/// How long one watch response lasts before the prober asks again.
pub const LIFETIME: Duration = Duration::from_secs(30);

/// How often dependency checks are re-run while someone watches; faults and draining are
/// reported without waiting for it.
pub const RECHECK: Duration = Duration::from_millis(100);

/// Heartbeats are clamped to this range (a request asking for less gets the minimum).
const HEARTBEAT_RANGE: (u64, u64) = (50, 10_000);

/// What a watcher asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchRequest {
    /// Repeat the current line this often; `None` sends changes only.
    pub heartbeat: Option<Duration>,
}

impl WatchRequest {
    /// Parses the request header `heartbeat=<ms>` (`0` or an empty value: no heartbeat).
    /// `None` for anything else, so a malformed request gets an ordinary probe answer.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        if value.is_empty() {
            return Some(Self { heartbeat: None });
        }
        let ms: u64 = value.strip_prefix("heartbeat=")?.trim().parse().ok()?;
        Some(Self {
            heartbeat: (ms > 0)
                .then(|| Duration::from_millis(ms.clamp(HEARTBEAT_RANGE.0, HEARTBEAT_RANGE.1))),
        })
    }

    /// The response header's value.
    pub fn header_value(&self) -> String {
        let ms = self.heartbeat.map_or(0, |h| h.as_millis());
        format!("heartbeat={ms}")
    }
}

/// The shared evaluator of one instance.
#[derive(Debug)]
pub(crate) struct Evaluator {
    state: watch::Sender<Option<Arc<ReadinessReport>>>,
    running: AtomicBool,
    poke: Notify,
}

impl Default for Evaluator {
    fn default() -> Self {
        Self {
            state: watch::Sender::new(None),
            running: AtomicBool::new(false),
            poke: Notify::new(),
        }
    }
}

impl Evaluator {
    /// Asks a running evaluator to re-run the checks now (draining started).
    pub(crate) fn poke(&self) {
        self.poke.notify_one();
    }
}

impl Health {
    /// Subscribes to this instance's readiness, starting the evaluator if nobody watched.
    /// The receiver's value is `None` until the first evaluation.
    pub fn watch_readiness(
        &self,
        faults: &Faults,
    ) -> watch::Receiver<Option<Arc<ReadinessReport>>> {
        let rx = self.evaluator().state.subscribe();
        self.ensure_evaluating(faults);
        rx
    }

    fn ensure_evaluating(&self, faults: &Faults) {
        let ev = self.evaluator();
        if ev
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let health = self.clone();
        let faults = faults.clone();
        tokio::spawn(async move {
            let mut changes = faults.subscribe();
            loop {
                let report = health.readiness(&faults).await;
                health.traffic().record_ready(report.failing.is_empty());
                health.evaluator().state.send_if_modified(|cur| {
                    let changed = cur.as_deref() != Some(&report);
                    if changed {
                        *cur = Some(Arc::new(report));
                    }
                    changed
                });
                tokio::select! {
                    () = tokio::time::sleep(RECHECK) => {}
                    () = health.evaluator().poke.notified() => {}
                    r = changes.changed() => { let _ = r; }
                }
                let ev = health.evaluator();
                if ev.state.receiver_count() == 0 {
                    // The next watcher starts from a fresh evaluation, not this one.
                    ev.state.send_replace(None);
                    ev.running.store(false, Ordering::Release);
                    // A watcher that subscribed after the count was read and saw `running`
                    // still set is served by taking the evaluator back.
                    if ev.state.receiver_count() == 0
                        || ev
                            .running
                            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                            .is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
}

/// One report line, with its newline.
pub fn line(report: &ReadinessReport) -> Bytes {
    if report.failing.is_empty() {
        return Bytes::from_static(b"ready\n");
    }
    let checks: Vec<&str> = report.failing.iter().map(|f| f.check.as_str()).collect();
    Bytes::from(format!("not_ready {}\n", checks.join(",")))
}

/// The body of one watch response: the lines described in the module documentation, from
/// `rx` (already holding a first report), ending after [`LIFETIME`] or once draining.
pub fn body(
    health: Health,
    mut rx: watch::Receiver<Option<Arc<ReadinessReport>>>,
    req: WatchRequest,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + Sync + 'static {
    let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let end = tokio::time::sleep(LIFETIME);
        tokio::pin!(end);
        let far = Duration::from_secs(3600);
        let mut last: Option<Bytes> = None;
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(report) = current {
                let l = line(&report);
                let send = last.as_ref() != Some(&l);
                if send {
                    if tx.send(l.clone()).await.is_err() {
                        return;
                    }
                    last = Some(l);
                }
                if health.is_draining() && !report.failing.is_empty() {
                    return;
                }
            }
            let beat = tokio::time::sleep(req.heartbeat.unwrap_or(far));
            tokio::select! {
                () = &mut end => return,
                () = tx.closed() => return,
                r = rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                () = beat => {
                    if let Some(l) = &last {
                        if tx.send(l.clone()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(out), Ok)
}
