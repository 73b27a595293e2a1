//! The traffic verdict and the "close persistent connections" signal.
//!
//! Flotilla's prober sends `flotilla-traffic: serving|ejected` on each readiness probe (here as
//! gRPC metadata on `grpc.health.v1.Health/Check`). A Service only steers *new* connections,
//! so while this pod should get no traffic (ejected, not ready, or draining for shutdown) it
//! asks every open connection to close: HTTP/2 connections get `GOAWAY` (in-flight calls
//! finish), idle HTTP/1.1 connections close. Clients then reconnect through the Service and
//! land on a pod that is serving. The request is repeated while the condition lasts (at most
//! every [`CLOSE_INTERVAL`]) so connections opened meanwhile do not stay pinned here.
//!
//! No I/O here: the server's connection tasks subscribe to [`Traffic::subscribe`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Request header / metadata key of the verdict (lower case, as HTTP/2 requires).
pub const TRAFFIC_HEADER: &str = "flotilla-traffic";
/// Verdict: this pod is a member of the traffic its Service selects.
pub const SERVING: &str = "serving";
/// Verdict: this pod is not; its connections should move elsewhere.
pub const EJECTED: &str = "ejected";

/// Shortest time between two close requests while a pod stays unwanted; a probe period of
/// 500 ms therefore closes at most two batches of connections per second.
pub const CLOSE_INTERVAL: Duration = Duration::from_millis(250);

/// The pod's traffic state, shared by the health service and the server (cheap to clone).
#[derive(Debug, Clone)]
pub struct Traffic {
    honour: bool,
    ejected: Arc<AtomicBool>,
    unready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    last_close: Arc<Mutex<Option<Instant>>>,
    close: Arc<watch::Sender<u64>>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self::new()
    }
}

impl Traffic {
    /// Serving, with no close requested yet.
    pub fn new() -> Self {
        Self {
            honour: true,
            ejected: Arc::new(AtomicBool::new(false)),
            unready: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            last_close: Arc::new(Mutex::new(None)),
            close: Arc::new(watch::channel(0).0),
        }
    }

    /// Like [`Traffic::new`], but never closes connections while serving, whatever the verdict
    /// or readiness says (`TRAFFIC_VERDICT=ignore`): how a server that does not honour the
    /// verdict behaves, so Flotilla's sticky-connection handling can be seen at work. Shutdown
    /// still closes connections.
    pub fn ignoring() -> Self {
        Self {
            honour: false,
            ..Self::new()
        }
    }

    /// Records the verdict a probe carried; unknown values are ignored (logged once per call).
    pub fn record_verdict(&self, value: &str) {
        match value.trim().to_ascii_lowercase().as_str() {
            SERVING => {
                if self.ejected.swap(false, Ordering::AcqRel) {
                    tracing::info!("traffic verdict: serving again");
                }
            }
            EJECTED => {
                if !self.ejected.swap(true, Ordering::AcqRel) {
                    tracing::info!("traffic verdict: ejected, closing persistent connections");
                }
            }
            other => tracing::debug!(value = other, "ignoring unknown traffic verdict"),
        }
    }

    /// Whether the last verdict was `ejected`.
    pub fn ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Records what the last health check found.
    pub fn record_ready(&self, ready: bool) {
        self.unready.store(!ready, Ordering::Release);
    }

    /// Marks the server as shutting down: from now on every connection should close.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether this pod should get no traffic (ejected, not ready at its last health check, or
    /// draining) and closes connections for it: then each answered call also closes the
    /// connection it came on, so a client that reconnected here before the endpoints moved
    /// leaves on its next call rather than at the next probe.
    pub fn closing(&self) -> bool {
        self.draining.load(Ordering::Acquire)
            || (self.honour
                && (self.ejected.load(Ordering::Acquire) || self.unready.load(Ordering::Acquire)))
    }

    /// Asks every open connection to close, unless that was done less than
    /// [`CLOSE_INTERVAL`] ago. Returns whether a request went out.
    pub fn close_connections(&self) -> bool {
        if !self.honour {
            return false;
        }
        let now = Instant::now();
        let mut last = match self.last_close.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.is_some_and(|t| now.duration_since(t) < CLOSE_INTERVAL) {
            return false;
        }
        *last = Some(now);
        self.close.send_modify(|generation| *generation += 1);
        true
    }

    /// Asks every open connection to close now, whatever the interval (shutdown).
    pub fn close_all_now(&self) {
        self.close.send_modify(|generation| *generation += 1);
    }

    /// A receiver that changes each time connections are asked to close.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.close.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_rate_limited_close() {
        // The verdict follows the header; close requests are not repeated within the interval.
        let t = Traffic::new();
        let rx = t.subscribe();
        t.record_verdict("Ejected");
        assert!(t.ejected());
        assert!(t.close_connections());
        assert!(!t.close_connections());
        assert_eq!(*rx.borrow(), 1);
        t.close_all_now();
        assert_eq!(*rx.borrow(), 2);
        t.record_verdict("bogus");
        assert!(t.ejected());
        t.record_verdict("serving");
        assert!(!t.ejected());
    }

    #[test]
    fn closing_follows_verdict_readiness_and_draining() {
        // Each of the three makes answered calls close their connections; an ignoring server
        // closes only when draining.
        let t = Traffic::new();
        assert!(!t.closing());
        t.record_ready(false);
        assert!(t.closing());
        t.record_ready(true);
        t.record_verdict("ejected");
        assert!(t.closing());
        t.record_verdict("serving");
        assert!(!t.closing());
        t.start_draining();
        assert!(t.closing());
        let i = Traffic::ignoring();
        i.record_ready(false);
        i.record_verdict("ejected");
        assert!(!i.closing());
        i.start_draining();
        assert!(i.closing());
    }

    #[test]
    fn an_ignoring_server_keeps_its_connections_until_shutdown() {
        // With the verdict ignored nothing is closed while serving; shutdown still closes.
        let t = Traffic::ignoring();
        let rx = t.subscribe();
        t.record_verdict("ejected");
        assert!(!t.close_connections());
        assert_eq!(*rx.borrow(), 0);
        t.close_all_now();
        assert_eq!(*rx.borrow(), 1);
    }
}
