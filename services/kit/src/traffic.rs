//! The traffic verdict: whether this pod should keep its persistent connections.
//!
//! A Service moves only *new* connections; a keep-alive pool, an HTTP/2 or a gRPC client keeps
//! sending on the connection it already has. Flotilla's prober therefore tells each pod, on
//! every readiness probe, whether it is in the Service's traffic (`Flotilla-Traffic: serving`)
//! or not (`Flotilla-Traffic: ejected`). While a pod is ejected — or, without being told, while
//! its own readiness fails or it is draining for shutdown — the kit server closes persistent
//! connections: `Connection: close` on every HTTP/1.1 response, idle keep-alive connections
//! closed at once, HTTP/2 `GOAWAY`. Clients reconnect through the Service and land on serving
//! pods. `serving` (while ready) restores normal keep-alive.
//!
//! A verdict counts only when [`crate::verdict`] finds it signed by the operator's leading
//! prober for this pod; others are counted and ignored, so no client that reaches `/readyz` can
//! turn keep-alive off.
//!
//! This module holds the state and the change signal only; [`crate::server`] acts on it and
//! [`crate::health`] feeds it from `/readyz`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::verdict::{unix_ms_now, Outcome, VerdictCheck};

/// Request header carrying the verdict on readiness probes (case-insensitive, as all HTTP
/// header names). Same name as `flotilla_crds::TRAFFIC_HEADER`; the kit keeps its own copy
/// so services need not depend on the operator's crates.
pub const TRAFFIC_HEADER: &str = "flotilla-traffic";

/// Verdict value: the pod is a member of the traffic its Service selects.
pub const SERVING: &str = "serving";

/// Verdict value: the pod is not; close persistent connections.
pub const EJECTED: &str = "ejected";

/// An `ejected` verdict lapses when no probe has repeated it for this long, so a pod whose
/// prober went away (operator down) returns to normal keep-alive on its own. The prober
/// repeats the verdict every probe period (well under a second).
pub const VERDICT_TTL: Duration = Duration::from_secs(10);

/// Shared traffic state of one instance; cheap to clone.
#[derive(Debug, Clone)]
pub struct Traffic {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    // Milliseconds since `started` (plus one) of the last `ejected` verdict; 0 = none.
    ejected_at_ms: AtomicU64,
    unready: AtomicBool,
    draining: AtomicBool,
    closing: watch::Sender<bool>,
    open: AtomicUsize,
    check: VerdictCheck,
}

impl Default for Traffic {
    fn default() -> Self {
        Self::new()
    }
}

impl Traffic {
    /// Serving, ready, not draining; acts on no verdict (see [`Traffic::with_check`]).
    pub fn new() -> Self {
        Self::with_check(VerdictCheck::disabled())
    }

    /// Serving, ready, not draining; acts on the verdicts `check` accepts.
    pub fn with_check(check: VerdictCheck) -> Self {
        Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                ejected_at_ms: AtomicU64::new(0),
                unready: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                closing: watch::Sender::new(false),
                open: AtomicUsize::new(0),
                check,
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Records a verdict sent by the prober with its signature header, if the verdict check
    /// accepts it (the outcome says). Values other than `serving` and `ejected` are ignored (a
    /// newer prober may send more).
    pub fn record_verdict(&self, value: &str, signature: Option<&str>) -> Outcome {
        let value = value.trim().to_ascii_lowercase();
        if value != EJECTED && value != SERVING {
            return Outcome::Malformed;
        }
        let outcome = self.inner.check.check(&value, signature, unix_ms_now());
        if outcome != Outcome::Accepted {
            tracing::debug!(outcome = outcome.label(), "ignoring a traffic verdict");
            return outcome;
        }
        if value == EJECTED {
            self.inner
                .ejected_at_ms
                .store(self.now_ms(), Ordering::Release);
        } else {
            self.inner.ejected_at_ms.store(0, Ordering::Release);
        }
        self.publish();
        outcome
    }

    /// The verdict check, whose counter the service registers.
    pub fn verdict_check(&self) -> &VerdictCheck {
        &self.inner.check
    }

    /// Records the outcome of the instance's own readiness check.
    pub fn record_ready(&self, ready: bool) {
        self.inner.unready.store(!ready, Ordering::Release);
        self.publish();
    }

    /// The instance is shutting down: close persistent connections from now on.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.publish();
    }

    /// Whether the prober's last verdict is `ejected` and still fresh.
    pub fn ejected(&self) -> bool {
        let at = self.inner.ejected_at_ms.load(Ordering::Acquire);
        at != 0
            && self.now_ms().saturating_sub(at)
                < u64::try_from(VERDICT_TTL.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether persistent connections should be closed now.
    pub fn closing(&self) -> bool {
        self.ejected()
            || self.inner.unready.load(Ordering::Acquire)
            || self.inner.draining.load(Ordering::Acquire)
    }

    /// A receiver that sees `true` whenever the instance starts closing connections.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Connections the server holds open right now.
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Counts one open connection until the returned guard is dropped (server use).
    pub fn connection_opened(&self) -> OpenConnection {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        OpenConnection(self.clone())
    }

    fn publish(&self) {
        let closing = self.closing();
        self.inner.closing.send_if_modified(|c| {
            let changed = *c != closing;
            *c = closing;
            changed
        });
    }
}

/// One open connection, counted in [`Traffic::open_connections`] while alive.
#[derive(Debug)]
pub struct OpenConnection(Traffic);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.inner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::verdict::testing::TestSigner;

    #[test]
    fn each_cause_closes_and_serving_restores() {
        // Ejection, own unreadiness and draining each make the instance close connections;
        // `serving` with readiness back restores keep-alive; unknown values change nothing.
        let op = TestSigner::new("k", [3; 32]);
        let t = Traffic::with_check(
            VerdictCheck::new(Some("p".into()), &op.keys_entry()).expect("keys parse"),
        );
        let send = |v: &str| {
            let sig = op.header("p", &v.to_ascii_lowercase(), unix_ms_now());
            t.record_verdict(v, Some(&sig))
        };
        let rx = t.subscribe();
        assert!(!t.closing());
        assert_eq!(send("Ejected"), Outcome::Accepted);
        assert!(t.closing() && *rx.borrow());
        send("something-new");
        assert!(t.closing());
        send("serving");
        assert!(!t.closing() && !*rx.borrow());
        t.record_ready(false);
        assert!(t.closing());
        send(SERVING);
        assert!(t.closing(), "serving does not override own unreadiness");
        t.record_ready(true);
        assert!(!t.closing());
        t.start_draining();
        send(SERVING);
        assert!(t.closing(), "draining is final");
    }

    #[test]
    fn unsigned_or_forged_verdicts_change_nothing() {
        // A client that reaches `/readyz` cannot eject the pod: only the operator's signature
        // counts (the spoofed `ejected` that turned keep-alive off for a public service).
        let op = TestSigner::new("k", [3; 32]);
        let t = Traffic::with_check(
            VerdictCheck::new(Some("p".into()), &op.keys_entry()).expect("keys parse"),
        );
        assert_eq!(t.record_verdict(EJECTED, None), Outcome::Unsigned);
        let forged = TestSigner::new("k", [4; 32]).header("p", EJECTED, unix_ms_now());
        assert_eq!(t.record_verdict(EJECTED, Some(&forged)), Outcome::Forged);
        assert!(!t.closing());
        assert!(!Traffic::new().closing());
        assert_eq!(
            Traffic::new().record_verdict(EJECTED, Some(&op.header("p", EJECTED, 1))),
            Outcome::Unconfigured
        );
    }
}
