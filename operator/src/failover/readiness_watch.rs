//! The readiness watch: one open request per pod on which the pod reports its readiness
//! changes as they happen, and whose connection tells at once when the pod dies.
//!
//! - HTTP pods: `GET <readiness path>` with `Flotilla-Watch: heartbeat=<ms>`; a pod that
//!   supports it answers with the same header and streams one line per change (`ready`,
//!   `not_ready <checks>`) and the current line again every heartbeat, ending the response now
//!   and then, when the watch asks again on the same connection. A pod without support answers
//!   the ordinary probe: the watch says so and ends, and the pod is probed every period only.
//! - gRPC pods: first the HTTP watch above, on the readiness path of the same port (where a
//!   gRPC pod serves its metrics too): a pod that supports it, as the sample `orders` does, has
//!   its call counts carried on every line (failing codes as errors) and its heartbeats find a
//!   hang. A pod that answers it otherwise, or not at all, is watched with
//!   `grpc.health.v1.Health/Watch`, the standard streaming check (`UNIMPLEMENTED`: no support),
//!   on a connection of its own that sends an HTTP/2 PING after each heartbeat of quiet and
//!   closes when one goes unanswered for the probe timeout: the protocol's own heartbeat, which
//!   every HTTP/2 server answers, so the pod needs nothing more.
//!
//! What the watch reports to the engine:
//! - a pod's own `not_ready` (or `NOT_SERVING`) at once, *decisive*: the pod knows, so it is not
//!   confirmed by more probes (a failure threshold guards against a noisy network, not against
//!   the pod's own word);
//! - `ready` again after it;
//! - the API request and 5xx counts a line carries (` requests=<n> errors=<m>` after the
//!   readiness; see the `error_spans` module), whenever they moved since the last line;
//! - silence on an HTTP watch with heartbeats (a pod that hangs: a stopped process accepts
//!   connections into its backlog, answers nothing and closes nothing): a heartbeat more than
//!   the probe timeout late is a failed probe (`Timeout`), and so is each next one missed;
//!   after the failure threshold's worth the watch ends and the periodic probes carry on;
//! - when the pod last spoke ([`LastLine`], shared, not sent): the engine checks every watch
//!   in one pass and probes a pod whose heartbeat is a tenth of a heartbeat late at once (beside
//!   a probe in flight, waiting at most a heartbeat), so a pod that hangs fails that probe's
//!   timeout close to the watch's own silence failure, the two independent failures that reach
//!   the default threshold; a probe's timeout does not close a watch with heartbeats;
//! - death on the wire: the connection closed or reset by the pod's side in the middle of the
//!   watch is a failed probe at once, confirmed by one immediate reconnect (refused, reset or
//!   no answer within the probe timeout: a second failure, which reaches the default
//!   threshold of two); a reconnect that works resumes the watch. On a gRPC watch a pod that
//!   hangs ends here too: its unanswered PING closes the connection at most a heartbeat and a
//!   timeout after the pod last answered (hyper reports it as the same broken pipe as a
//!   closed connection, so it is told as `connection_lost`), and the reconnect, which a stopped
//!   process accepts into its backlog and never answers, fails a timeout later (as `Timeout`).
//!
//! The periodic probes go on beside the watch: they carry the traffic verdicts and the scrapes.
//! The watch ends after a failed reconnect or a silence; the engine opens it again after the
//! pod's next successful probe.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::error_rate::Counts;
use super::pod_health::Observation;
use super::probe::{serving_observation, HttpPaths, PodConn, ProbeClient};

/// Longest report line read; longer lines end the watch as malformed.
const MAX_LINE: usize = 1024;

/// What one watch tells the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The pod accepted the watch (sent once per watch request), with whether it sends
    /// heartbeats (then silence is noticed, and the engine probes the pod less often).
    Opened {
        /// The pod repeats its state at least every heartbeat the watch asked for.
        heartbeats: bool,
    },
    /// The pod does not support watching; it is probed every period only.
    Unsupported,
    /// A readiness observation: the pod's own word, or a broken watch connection
    /// (`ConnectError`: lost, then again if the immediate reconnect failed).
    Report {
        /// What was seen.
        observation: Observation,
        /// When.
        at: Instant,
        /// The pod's own word that it is not ready: counts as reaching the failure threshold.
        decisive: bool,
        /// What it was, for the watch metrics: `ready`, `not_ready`, `silent`,
        /// `connection_lost`, `reconnect_failed`, `open_failed`.
        report: &'static str,
    },
    /// The pod's cumulative API request and 5xx counts, from an HTTP watch line that carries
    /// them (sent when they moved since the last line).
    Counts {
        /// The counts (`probes` is always 0: the pod leaves its own probe routes out).
        counts: Counts,
        /// When the line came.
        at: Instant,
    },
    /// The watch stopped (its reconnect failed); the engine may open it again.
    Ended,
}

/// Where one watch reports: the engine's channel, tagged with the pod's id and the watch's
/// generation (so reports of a watch the engine already replaced are told apart).
#[derive(Debug, Clone)]
pub struct Reporter {
    /// The engine's channel.
    pub tx: mpsc::UnboundedSender<(u64, u64, WatchEvent)>,
    /// The pod's id in the engine.
    pub id: u64,
    /// The watch's generation.
    pub generation: u64,
}

impl Reporter {
    fn send(&self, event: WatchEvent) {
        let _ = self.tx.send((self.id, self.generation, event));
    }

    /// Says the pod accepted the watch (the engine counts it once per watch).
    fn opened(&self, heartbeats: bool) {
        self.send(WatchEvent::Opened { heartbeats });
    }

    fn report(&self, observation: Observation, decisive: bool, report: &'static str) {
        self.send(WatchEvent::Report {
            observation,
            at: Instant::now(),
            decisive,
            report,
        });
    }
}

/// When a watch last heard its pod (a line, or the head of a watch response), shared with the
/// engine: it checks all watches for a late heartbeat in one pass, where a timer per watch
/// would wake the prober for every line of every pod.
#[derive(Debug)]
pub struct LastLine {
    base: Instant,
    /// Nanoseconds after `base`.
    nanos: AtomicU64,
}

impl LastLine {
    /// Heard now.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            nanos: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let since = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(since, Ordering::Relaxed);
    }

    /// When the pod was last heard.
    pub fn at(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

impl Default for LastLine {
    fn default() -> Self {
        Self::new()
    }
}

/// What a watch of one pod needs.
#[derive(Debug, Clone)]
pub struct WatchTarget {
    /// The pod's address.
    pub addr: SocketAddr,
    /// The HTTP request targets, for an HTTP pod.
    pub http: Option<Arc<HttpPaths>>,
    /// `Some(service name)` for a gRPC pod.
    pub grpc_service: Option<String>,
    /// Bound of connecting and of each response head, and the silence that counts as a failed
    /// probe on a watch with heartbeats.
    pub timeout: Duration,
    /// The heartbeat asked of HTTP pods; on a gRPC watch, the quiet after which a PING is sent.
    pub heartbeat: Duration,
    /// The service's `maxErrorRate`, asked of the pod as the ratio of failed API requests to
    /// report at once (see `error_spans`).
    pub errors_above: Option<f64>,
    /// Silent heartbeats (after the first `timeout`) that end the watch: the failure threshold.
    pub failure_threshold: u32,
    /// When the pod was last heard, for the engine.
    pub last_line: Arc<LastLine>,
}

/// Runs one pod's watch until it ends (see the module documentation); the engine aborts it
/// when the pod goes away or changes address. The gRPC watch is boxed: an HTTP watch, the
/// usual one, would otherwise carry its larger state for as long as it runs.
pub async fn run(target: WatchTarget, reporter: Reporter) {
    match (&target.grpc_service, &target.http) {
        (Some(service), Some(http)) => {
            // Flotilla's own watch first, on the same port: its lines also carry the call
            // counts (the standard `Health/Watch` has nowhere to put them) and its heartbeats
            // find a pod that hangs.
            if !self::http(&target, http, &reporter, Fallback::Grpc).await {
                Box::pin(grpc(&target, service, &reporter)).await;
            }
        }
        (Some(service), None) => Box::pin(grpc(&target, service, &reporter)).await,
        (None, Some(http)) => {
            self::http(&target, http, &reporter, Fallback::None).await;
        }
        (None, None) => {}
    }
    reporter.send(WatchEvent::Ended);
}

/// What an HTTP watch that never opens leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// Nothing: an HTTP pod without support is probed every period, one that cannot be
    /// reached has failed a probe.
    None,
    /// A gRPC pod's `Health/Watch`, which says the same as the HTTP watch would have.
    Grpc,
}

/// How one watch response ended.
enum Ended {
    /// Complete; the pod will answer the next request.
    Complete,
    /// The pod does not watch.
    Unsupported,
    /// Cut (closed, reset, malformed: `ConnectError`) or not opened in time (`Timeout`).
    Broken(Observation),
    /// No line for as long as the failure threshold allows: the pod hangs.
    Silent,
}

/// Reports what the pod said when it differs from what it said `last` (or when `force`d): its
/// own "not ready" is decisive.
fn tell(last: &mut Option<Said>, observation: Observation, force: bool, reporter: &Reporter) {
    let said = if observation.is_success() {
        Said::Ready
    } else {
        Said::NotReady
    };
    if *last == Some(said) && !force {
        return;
    }
    *last = Some(said);
    match said {
        Said::Ready => reporter.report(observation, false, "ready"),
        Said::NotReady => reporter.report(observation, true, "not_ready"),
    }
}

/// Readiness line state, to report changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    Ready,
    NotReady,
}

/// Runs the HTTP watch until it ends; `false` when it never opened and `fallback` is to watch
/// over gRPC instead (nothing reported then).
async fn http(
    target: &WatchTarget,
    paths: &HttpPaths,
    reporter: &Reporter,
    fallback: Fallback,
) -> bool {
    let request = paths.watch(target.heartbeat, target.errors_above);
    let mut conn: Option<PodConn> = None;
    let mut last: Option<Said> = None;
    let mut state = Retry::default();
    loop {
        let mut opened = false;
        let ended = http_once(
            target,
            &request,
            &mut conn,
            &mut last,
            reporter,
            &mut opened,
        )
        .await;
        let never_opened = !opened && !state.ever_opened;
        if fallback == Fallback::Grpc
            && never_opened
            && matches!(ended, Ended::Unsupported | Ended::Broken(_))
        {
            return false;
        }
        if !state.after(ended, opened, &mut last, reporter) {
            return true;
        }
    }
}

/// What a watch does after one request ended: the rule of death on the wire.
#[derive(Debug, Default)]
struct Retry {
    /// The pod accepted a watch at least once.
    ever_opened: bool,
    /// The last request was the immediate reconnect after a lost connection.
    reconnecting: bool,
}

impl Retry {
    /// Reports what `ended` means and says whether to ask again.
    fn after(
        &mut self,
        ended: Ended,
        opened: bool,
        last: &mut Option<Said>,
        reporter: &Reporter,
    ) -> bool {
        if opened {
            self.ever_opened = true;
            self.reconnecting = false;
        }
        match ended {
            Ended::Complete => true,
            Ended::Silent => false,
            Ended::Unsupported => {
                reporter.send(WatchEvent::Unsupported);
                false
            }
            Ended::Broken(obs) if !self.ever_opened => {
                // Never opened: one failed probe; the engine opens it again after a success.
                reporter.report(obs, false, "open_failed");
                false
            }
            Ended::Broken(obs) if self.reconnecting => {
                // The immediate reconnect failed too: the second failure.
                reporter.report(obs, false, "reconnect_failed");
                false
            }
            Ended::Broken(_) => {
                // Death on the wire, to be confirmed by reconnecting at once (a pod that just
                // said it is not ready and then closed is already out).
                if *last != Some(Said::NotReady) {
                    reporter.report(Observation::ConnectError, false, "connection_lost");
                }
                *last = None;
                self.reconnecting = true;
                true
            }
        }
    }
}

/// One watch request on `conn` (opened if needed), read to its end.
async fn http_once(
    target: &WatchTarget,
    request: &[u8],
    conn: &mut Option<PodConn>,
    last: &mut Option<Said>,
    reporter: &Reporter,
    opened_watch: &mut bool,
) -> Ended {
    let open = async {
        let mut c = match conn.take().filter(PodConn::is_reusable) {
            Some(c) => c,
            None => PodConn::connect_for_watch(target.addr)
                .await
                .map_err(|_| ())?,
        };
        let head = c.send(request).await.map_err(|_| ())?;
        Ok::<_, ()>((c, head))
    };
    let (mut c, head) = match tokio::time::timeout(target.timeout, open).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(())) => return Ended::Broken(Observation::ConnectError),
        Err(_) => return Ended::Broken(Observation::Timeout),
    };
    let Some(heartbeat) = head.watch else {
        return Ended::Unsupported;
    };
    *opened_watch = true;
    let heartbeats = heartbeat > 0;
    reporter.opened(heartbeats);
    // When the last line came (shared with the engine, which looks for late heartbeats).
    let heard = &target.last_line;
    heard.mark();
    let last_line = || heard.at();
    // Set by a silence failure, so the next line is reported whatever it says.
    let spoke_after_silence = AtomicBool::new(false);
    let mut line = Vec::new();
    let mut counted: Option<Counts> = None;
    let read = c.body(&head, |data| {
        for &b in data {
            if b != b'\n' {
                if line.len() >= MAX_LINE {
                    return Err(());
                }
                line.push(b);
                continue;
            }
            heard.mark();
            let observation = if line.starts_with(b"ready") {
                Observation::Success
            } else if line.starts_with(b"not_ready") {
                Observation::BadStatus(503)
            } else {
                line.clear();
                continue;
            };
            let counts = line_counts(&line);
            line.clear();
            let force = spoke_after_silence.swap(false, Ordering::Relaxed);
            tell(last, observation, force, reporter);
            if counts.is_some() && counts != counted {
                counted = counts;
                if let Some(counts) = counts {
                    reporter.send(WatchEvent::Counts {
                        counts,
                        at: Instant::now(),
                    });
                }
            }
        }
        Ok(())
    });
    // With heartbeats, a line is due every heartbeat; one later than the probe timeout is a
    // failed probe, and so is each next one missed, until the failure threshold's worth ends
    // the watch: failure k comes k heartbeats and one timeout after the last line.
    let beat = Duration::from_millis(heartbeat);
    let silence = async {
        let mut silent = 0u32;
        let mut since = last_line();
        loop {
            let heard = last_line();
            if heard != since {
                // A line came: the pod speaks again.
                since = heard;
                silent = 0;
            }
            let deadline = since + beat * (silent + 1) + target.timeout;
            if Instant::now() < deadline {
                tokio::time::sleep_until(deadline.into()).await;
                continue;
            }
            silent += 1;
            spoke_after_silence.store(true, Ordering::Relaxed);
            reporter.report(Observation::Timeout, false, "silent");
            if silent >= target.failure_threshold.max(1) {
                return;
            }
        }
    };
    let read = if heartbeats {
        tokio::select! {
            r = read => r,
            () = silence => return Ended::Silent,
        }
    } else {
        read.await
    };
    if read.is_err() {
        return Ended::Broken(Observation::ConnectError);
    }
    if c.completed() {
        *conn = Some(c);
    }
    Ended::Complete
}

/// The counts a report line carries after its readiness (`requests=<n> errors=<m>`), if both
/// are there and make sense (no more errors than requests).
fn line_counts(line: &[u8]) -> Option<Counts> {
    let text = std::str::from_utf8(line).ok()?;
    let (mut requests, mut errors) = (None, None);
    for word in text.split(' ').skip(1) {
        if let Some(n) = word.strip_prefix("requests=") {
            requests = n.parse::<u64>().ok();
        } else if let Some(n) = word.strip_prefix("errors=") {
            errors = n.parse::<u64>().ok();
        }
    }
    let (requests, errors) = (requests?, errors?);
    (errors <= requests).then_some(Counts {
        total: requests as f64,
        errors: errors as f64,
        probes: 0.0,
    })
}

async fn grpc(target: &WatchTarget, service: &str, reporter: &Reporter) {
    let mut last: Option<Said> = None;
    let mut state = Retry::default();
    loop {
        let mut opened = false;
        let ended = grpc_once(target, service, &mut last, reporter, &mut opened).await;
        if !state.after(ended, opened, &mut last, reporter) {
            return;
        }
    }
}

/// One `Health/Watch` call on a connection of its own (see [`ProbeClient::watch_channel`]),
/// read to its end; each call starts from a new connection.
async fn grpc_once(
    target: &WatchTarget,
    service: &str,
    last: &mut Option<Said>,
    reporter: &Reporter,
    opened_watch: &mut bool,
) -> Ended {
    let Ok(channel) = ProbeClient::watch_channel(target.addr, target.heartbeat, target.timeout)
    else {
        return Ended::Broken(Observation::ConnectError);
    };
    let mut health = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let mut stream = match tokio::time::timeout(target.timeout, health.watch(request)).await {
        Ok(Ok(resp)) => {
            *opened_watch = true;
            reporter.opened(false);
            resp.into_inner()
        }
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            return Ended::Unsupported
        }
        Ok(Err(_)) => return Ended::Broken(Observation::ConnectError),
        Err(_) => return Ended::Broken(Observation::Timeout),
    };
    loop {
        match stream.message().await {
            Ok(Some(msg)) => tell(last, serving_observation(msg.status()), false, reporter),
            // The server ended a stream the protocol keeps open (it is going away), or the
            // connection broke: closed or reset by the pod, or closed under the stream because
            // a PING went unanswered (the pod hangs; hyper reports both as a broken pipe).
            Ok(None) | Err(_) => return Ended::Broken(Observation::ConnectError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_carry_counts_after_the_readiness() {
        // Counts follow the readiness word (and a `not_ready` line's checks); a line without
        // them, or with more errors than requests, carries none.
        let c = |total, errors| {
            Some(Counts {
                total,
                errors,
                probes: 0.0,
            })
        };
        assert_eq!(line_counts(b"ready requests=40 errors=3"), c(40.0, 3.0));
        assert_eq!(
            line_counts(b"not_ready faults,database requests=7 errors=0"),
            c(7.0, 0.0)
        );
        assert_eq!(line_counts(b"ready"), None);
        assert_eq!(line_counts(b"ready requests=4"), None);
        assert_eq!(line_counts(b"ready requests=1 errors=2"), None);
        assert_eq!(line_counts(b"ready requests=-1 errors=0"), None);
    }
}
