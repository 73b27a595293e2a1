//! The readiness watch: `/readyz` held open, reporting each change of readiness the moment the
//! instance knows it, so Flotilla's prober does not wait for its next probe.
//!
//! Protocol (see `services/README.md`): a `GET /readyz` with the request header
//! `Flotilla-Watch: heartbeat=<ms>` is answered at once with the usual status (200 or 503),
//! the same header (the heartbeat the instance uses, `0` for none) and a chunked
//! `text/plain` body of lines, one per report: `ready` or `not_ready <check>,<check>`, then
//! the instance's cumulative request counts, ` requests=<n> errors=<m>` (its API requests, and
//! those answered 5xx). The first line is the readiness now; then a line on every change, and
//! the current line again, with the counts as they are then, every heartbeat when one was
//! asked for. With `Flotilla-Watch-Errors: above=<ratio> requests=<n>` as well, a failing
//! stretch of API requests is reported without waiting for the heartbeat (see
//! [`ErrorLines`]). The response ends after [`LIFETIME`], or right
//! after a `not_ready shutdown` line when the instance starts draining, and the prober asks
//! again. A server that does not know the header answers the ordinary probe, which tells the
//! prober to probe it every period instead.
//!
//! One evaluator per instance runs the readiness checks while anyone watches: at once when
//! faults change or draining starts, and every [`RECHECK`] for dependency checks (database,
//! upstream services). Watchers share its result.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

/// The request and response header of the watch (header names are case-insensitive).
pub const WATCH_HEADER: &str = "flotilla-watch";

/// The request header asking for early lines when API requests fail (see [`ErrorLines`]).
pub const ERRORS_HEADER: &str = "flotilla-watch-errors";

/// How long one watch response lasts before the prober asks again.
pub const LIFETIME: Duration = Duration::from_secs(30);

/// How often dependency checks are re-run while someone watches; faults and draining are
/// reported without waiting for it.
pub const RECHECK: Duration = Duration::from_millis(100);

/// Heartbeats are clamped to this range (a request asking for less gets the minimum).
const HEARTBEAT_RANGE: (u64, u64) = (50, 10_000);

/// Fewest milliseconds between two early lines of one watch.
const EARLY_GAP: Duration = Duration::from_millis(50);

/// What a watcher asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchRequest {
    /// Repeat the current line this often; `None` sends changes only.
    pub heartbeat: Option<Duration>,
    /// Send a line early when API requests fail, not only at the heartbeat.
    pub errors: Option<ErrorLines>,
}

/// When a watch sends a line before its heartbeat because API requests fail
/// (`Flotilla-Watch-Errors: above=<ratio> requests=<n>`, the prober's `maxErrorRate` and the
/// fewest requests it judges a stretch on). The prober judges the error ratio between two
/// lines, so the lines mark where the stretches start and end:
/// - **the first failure after a clean stretch:** a line at once when a request fails after at
///   least `requests` successful ones since the last line, so these close a stretch of their
///   own and the failures start the next (at most one such line per heartbeat);
/// - **a failing stretch:** a line as soon as at least `requests` were answered since the last
///   line and more than `above` of them failed, at most one every 50 ms.
///
/// An instance without errors, or with fewer than the prober would eject it for, sends no line
/// more than its heartbeats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorLines {
    /// The failing ratio, 0 to 1.
    pub above: f64,
    /// Fewest requests in a stretch, at least 1.
    pub requests: u64,
}

impl ErrorLines {
    /// Parses `above=<ratio> requests=<n>` (either order, separated by spaces, commas or
    /// semicolons); `None` when either is missing or out of range, so a malformed header asks
    /// for heartbeats only.
    pub fn parse(value: &str) -> Option<Self> {
        let (mut above, mut requests) = (None, None);
        for part in value
            .split([' ', ',', ';'])
            .filter(|p| !p.trim().is_empty())
        {
            let (key, v) = part.trim().split_once('=')?;
            match key.trim() {
                "above" => above = v.trim().parse::<f64>().ok(),
                "requests" => requests = v.trim().parse::<u64>().ok(),
                _ => {}
            }
        }
        let (above, requests) = (above?, requests?);
        ((0.0..1.0).contains(&above) && requests > 0).then_some(Self { above, requests })
    }

    /// When a line is due because of failed requests: `counts` now, the counts of the last line
    /// (`sent`, at `sent_at`), and when the last first-failure line went out.
    fn due(
        &self,
        counts: (u64, u64),
        sent: (u64, u64),
        sent_at: tokio::time::Instant,
        boundary_at: Option<tokio::time::Instant>,
        heartbeat: Duration,
    ) -> Option<(tokio::time::Instant, bool)> {
        let requests = counts.0.saturating_sub(sent.0);
        let errors = counts.1.saturating_sub(sent.1);
        if errors == 0 {
            return None;
        }
        let now = tokio::time::Instant::now();
        let clean = requests.saturating_sub(errors);
        let boundary_free = boundary_at.is_none_or(|at| now.duration_since(at) >= heartbeat);
        if clean >= self.requests && boundary_free {
            return Some((now, true));
        }
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let failing = requests >= self.requests && errors as f64 > self.above * requests as f64;
        failing.then(|| (sent_at + EARLY_GAP, false))
    }
}

impl WatchRequest {
    /// Parses the request header `heartbeat=<ms>` (`0` or an empty value: no heartbeat).
    /// `None` for anything else, so a malformed request gets an ordinary probe answer.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        if value.is_empty() {
            return Some(Self {
                heartbeat: None,
                errors: None,
            });
        }
        let ms: u64 = value.strip_prefix("heartbeat=")?.trim().parse().ok()?;
        Some(Self {
            heartbeat: (ms > 0)
                .then(|| Duration::from_millis(ms.clamp(HEARTBEAT_RANGE.0, HEARTBEAT_RANGE.1))),
            errors: None,
        })
    }

    /// The same request, with early lines when the errors header asked for them.
    #[must_use]
    pub fn with_errors(self, header: Option<&str>) -> Self {
        Self {
            errors: header.and_then(ErrorLines::parse),
            ..self
        }
    }

    /// The response header's value.
    pub fn header_value(&self) -> String {
        let ms = self.heartbeat.map_or(0, |h| h.as_millis());
        format!("heartbeat={ms}")
    }
}

/// The shared state of one instance's watchers: the latest report (`None` until the first
/// evaluation), whether an evaluator task runs, and its wake-up for changes that cannot wait
/// for [`RECHECK`]. The instance's health module runs the evaluator.
#[derive(Debug)]
pub struct Evaluator<R> {
    /// The latest report.
    pub state: watch::Sender<Option<Arc<R>>>,
    /// Whether the evaluator task runs.
    pub running: AtomicBool,
    /// Wakes the evaluator now (draining started).
    pub poke: Notify,
}

impl<R> Default for Evaluator<R> {
    fn default() -> Self {
        Self {
            state: watch::Sender::new(None),
            running: AtomicBool::new(false),
            poke: Notify::new(),
        }
    }
}

impl<R> Evaluator<R> {
    /// Claims the evaluator's slot: `true` when the caller must start the task.
    pub fn claim(&self) -> bool {
        self.running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Called by the task after each round: `false` when nobody watches any more and the task
    /// must end (a watcher that subscribed in between is served by taking the slot back).
    pub fn keep_running(&self) -> bool {
        if self.state.receiver_count() > 0 {
            return true;
        }
        // The next watcher starts from a fresh evaluation, not this one.
        self.state.send_replace(None);
        self.running.store(false, Ordering::Release);
        self.state.receiver_count() > 0 && self.claim()
    }
}

/// What a watch body needs of a report.
pub trait Report: Send + Sync + 'static {
    /// The report's line, with its newline: `ready` or `not_ready <check>,<check>`.
    fn line(&self) -> Bytes;
    /// Whether the response ends after this report (the instance is draining).
    fn is_last(&self) -> bool;
}

/// Cumulative counts of the instance's API requests and of those answered with a 5xx status,
/// carried on every watch line: with one line per heartbeat the prober sees the error ratio at
/// the heartbeat's resolution instead of at its metrics scrapes'. Health, metrics and admin
/// requests are not counted (they are the prober's and the operator's own).
#[derive(Debug, Default)]
pub struct RequestCounts {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Wakes the watches that send early lines on failures.
    failed: Notify,
}

impl RequestCounts {
    /// Counts one API request answered over HTTP with `status` (a 5xx is an error).
    pub fn record(&self, status: u16) {
        self.record_outcome((500..600).contains(&status));
    }

    /// Counts one answered API request; `failed` when the server failed it (an HTTP 5xx, or a
    /// gRPC call's Unknown, DeadlineExceeded, Internal, Unavailable or DataLoss).
    pub fn record_outcome(&self, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
            self.failed.notify_waiters();
        }
    }

    /// The counts so far: (requests, 5xx answers).
    pub fn get(&self) -> (u64, u64) {
        // Errors first: a request counted between the two loads can only make `errors` lag,
        // never exceed `requests`.
        let errors = self.errors.load(Ordering::Relaxed);
        let requests = self.requests.load(Ordering::Relaxed);
        (requests.max(errors), errors)
    }
}

/// `line` (a report's line, with its newline) with the counts appended.
pub fn with_counts(line: &[u8], (requests, errors): (u64, u64)) -> Bytes {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let mut out = Vec::with_capacity(text.len() + 40);
    out.extend_from_slice(text);
    out.extend_from_slice(format!(" requests={requests} errors={errors}\n").as_bytes());
    Bytes::from(out)
}

/// The `not_ready` line naming `checks`, or `ready` when there are none.
pub fn line<'a>(mut checks: impl Iterator<Item = &'a str>) -> Bytes {
    let Some(first) = checks.next() else {
        return Bytes::from_static(b"ready\n");
    };
    let mut l = format!("not_ready {first}");
    for c in checks {
        l.push(',');
        l.push_str(c);
    }
    l.push('\n');
    Bytes::from(l)
}

/// The body of one watch response: the lines described in the module documentation, from
/// `rx` (already holding a first report) with `counts` read as each line goes out, ending
/// after [`LIFETIME`] or after a last report.
pub fn body<R: Report>(
    mut rx: watch::Receiver<Option<Arc<R>>>,
    req: WatchRequest,
    counts: Arc<RequestCounts>,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + Sync + 'static {
    let (tx, out) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let end = tokio::time::sleep(LIFETIME);
        tokio::pin!(end);
        let far = Duration::from_secs(3600);
        let mut out = Sent::default();
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(report) = current {
                let l = report.line();
                if out.line.as_ref() != Some(&l) && !out.send(&tx, l, &counts).await {
                    return;
                }
                if report.is_last() {
                    return;
                }
            }
            let beat = tokio::time::sleep(req.heartbeat.unwrap_or(far));
            let early = out.early(&req, &counts);
            tokio::select! {
                () = &mut end => return,
                () = tx.closed() => return,
                r = rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                () = beat => {
                    if !out.repeat(&tx, &counts).await {
                        return;
                    }
                }
                boundary = early => {
                    if !out.repeat(&tx, &counts).await {
                        return;
                    }
                    if boundary {
                        out.boundary_at = Some(out.at);
                    }
                }
            }
        }
    });
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(out), Ok)
}

/// What one watch last sent.
#[derive(Debug)]
struct Sent {
    /// The readiness line (without counts).
    line: Option<Bytes>,
    /// The counts it carried.
    counts: (u64, u64),
    /// When.
    at: tokio::time::Instant,
    /// When the last first-failure line went out (see [`ErrorLines`]).
    boundary_at: Option<tokio::time::Instant>,
}

impl Default for Sent {
    fn default() -> Self {
        Self {
            line: None,
            counts: (0, 0),
            at: tokio::time::Instant::now(),
            boundary_at: None,
        }
    }
}

impl Sent {
    /// Sends `line` with the counts now; `false` when the watcher is gone.
    async fn send(
        &mut self,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
        line: Bytes,
        counts: &RequestCounts,
    ) -> bool {
        let now = counts.get();
        if tx.send(with_counts(&line, now)).await.is_err() {
            return false;
        }
        self.line = Some(line);
        self.counts = now;
        self.at = tokio::time::Instant::now();
        true
    }

    /// Sends the last line again with the counts now (nothing before the first).
    async fn repeat(
        &mut self,
        tx: &tokio::sync::mpsc::Sender<Bytes>,
        counts: &RequestCounts,
    ) -> bool {
        match self.line.clone() {
            Some(l) => self.send(tx, l, counts).await,
            None => true,
        }
    }

    /// Resolves when a line is due early because API requests failed, with whether it is a
    /// first-failure line; never when the watcher did not ask for early lines.
    fn early<'a>(
        &self,
        req: &WatchRequest,
        counts: &'a RequestCounts,
    ) -> impl std::future::Future<Output = bool> + Send + use<'a> {
        // Nothing to repeat before the first line, so nothing early either.
        let rule = req.errors.filter(|_| self.line.is_some());
        let heartbeat = req.heartbeat.unwrap_or(LIFETIME);
        let (sent, sent_at, boundary_at) = (self.counts, self.at, self.boundary_at);
        async move {
            let Some(rule) = rule else {
                return std::future::pending().await;
            };
            loop {
                let failed = counts.failed.notified();
                tokio::pin!(failed);
                // Registered before the counts are read, so a failure in between still wakes.
                failed.as_mut().enable();
                if let Some((at, boundary)) =
                    rule.due(counts.get(), sent, sent_at, boundary_at, heartbeat)
                {
                    tokio::time::sleep_until(at).await;
                    return boundary;
                }
                failed.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_errors_header_needs_a_ratio_and_a_stretch() {
        let rule = ErrorLines {
            above: 0.5,
            requests: 10,
        };
        for ok in [
            "above=0.5 requests=10",
            "requests=10, above=0.5",
            " above=0.5;requests=10 ",
        ] {
            assert_eq!(ErrorLines::parse(ok), Some(rule), "{ok}");
        }
        for bad in [
            "",
            "above=0.5",
            "requests=10",
            "above=1 requests=10",
            "above=-0.1 requests=10",
            "above=0.5 requests=0",
            "above=half requests=10",
            "above",
        ] {
            assert_eq!(ErrorLines::parse(bad), None, "{bad}");
        }
        let req = WatchRequest::parse("heartbeat=250").map(|r| r.with_errors(Some("junk")));
        assert_eq!(req.and_then(|r| r.errors), None, "heartbeats only");
    }
}
