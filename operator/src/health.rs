//! Liveness: whether the loops that must keep moving still do, for `/healthz`.
//!
//! Two signals, each judged against one stall limit:
//! - the controller: reconciles in flight with none finishing for the limit (an idle controller
//!   with nothing to do is healthy; every API call of a reconcile has a timeout, so a reconcile
//!   that runs this long is stuck, for example on caches that never sync);
//! - the prober: the failover engine beats on every turn of its loop, which wakes at least every
//!   `decide_every` (200 ms) even with nothing to probe, so silence means it is wedged or gone.
//!
//! And one reported at once: leader election that cannot go on (the Lease is missing and this
//! replica may not create it), which no restart fixes but which an admin must see.
//!
//! No I/O here: the HTTP route reads [`Health::check`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default stall limit: far above the longest a reconcile may take when every call times out.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct Reconciles {
    in_flight: usize,
    /// When a reconcile last finished, or the first of the current ones started.
    progress: Instant,
}

#[derive(Debug)]
struct Inner {
    stall_after: Duration,
    epoch: Instant,
    reconciles: Mutex<Reconciles>,
    prober_armed: AtomicBool,
    /// Milliseconds since `epoch` of the prober's last beat.
    prober_beat: AtomicU64,
    /// Why leader election cannot go on, as the elector last reported it.
    election: Mutex<Option<String>>,
}

/// The replica's liveness record, shared by the controller, the prober and `/healthz`.
#[derive(Debug, Clone)]
pub struct Health(Arc<Inner>);

impl Default for Health {
    fn default() -> Self {
        Self::new(DEFAULT_STALL_AFTER)
    }
}

impl Health {
    /// A record that reports a stall after `stall_after` without progress.
    pub fn new(stall_after: Duration) -> Self {
        let now = Instant::now();
        Health(Arc::new(Inner {
            stall_after,
            epoch: now,
            reconciles: Mutex::new(Reconciles {
                in_flight: 0,
                progress: now,
            }),
            prober_armed: AtomicBool::new(false),
            prober_beat: AtomicU64::new(0),
            election: Mutex::new(None),
        }))
    }

    /// Records why leader election cannot go on (`None`: it can); reported by
    /// [`Health::check`] until cleared.
    pub fn election_problem(&self, problem: Option<String>) {
        *self.0.election.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    fn reconciles(&self) -> std::sync::MutexGuard<'_, Reconciles> {
        self.0.reconciles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a reconcile as started; dropping the guard marks it finished.
    pub fn reconcile_started(&self) -> ReconcileGuard {
        let mut r = self.reconciles();
        if r.in_flight == 0 {
            r.progress = Instant::now();
        }
        r.in_flight += 1;
        ReconcileGuard(self.clone())
    }

    /// The prober's heartbeat; from now on a silent prober makes the replica unhealthy.
    pub fn prober(&self) -> Heartbeat {
        let beat = Heartbeat(Some(self.0.clone()));
        beat.beat();
        self.0.prober_armed.store(true, Ordering::Relaxed);
        beat
    }

    /// `Ok`, or why the replica is not live.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    /// [`Health::check`] at `now`.
    pub fn check_at(&self, now: Instant) -> Result<(), String> {
        let limit = self.0.stall_after;
        let mut problems = Vec::new();
        {
            let r = self.reconciles();
            let quiet = now.saturating_duration_since(r.progress);
            if r.in_flight > 0 && quiet > limit {
                problems.push(format!(
                    "controller stalled: {} reconcile(s) in flight and none finished for {}s (limit {}s)",
                    r.in_flight,
                    quiet.as_secs(),
                    limit.as_secs()
                ));
            }
        }
        if self.0.prober_armed.load(Ordering::Relaxed) {
            let beat =
                self.0.epoch + Duration::from_millis(self.0.prober_beat.load(Ordering::Relaxed));
            let quiet = now.saturating_duration_since(beat);
            if quiet > limit {
                problems.push(format!(
                    "prober stalled: no probe round for {}s (limit {}s)",
                    quiet.as_secs(),
                    limit.as_secs()
                ));
            }
        }
        if let Some(p) = self
            .0
            .election
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            problems.push(p);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Held while a reconcile runs.
#[derive(Debug)]
pub struct ReconcileGuard(Health);

impl Drop for ReconcileGuard {
    fn drop(&mut self) {
        let mut r = self.0.reconciles();
        r.in_flight = r.in_flight.saturating_sub(1);
        r.progress = Instant::now();
    }
}

/// A loop's "still moving" signal. The default one is detached (beats go nowhere), for engines
/// run without a health record (benchmarks, tests).
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Option<Arc<Inner>>);

impl Heartbeat {
    /// Records progress now.
    pub fn beat(&self) {
        if let Some(inner) = &self.0 {
            let ms = u64::try_from(inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            inner.prober_beat.store(ms, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    /// An idle controller is healthy however long nothing happens.
    #[test]
    fn idle_is_healthy() {
        let h = Health::new(LIMIT);
        assert_eq!(h.check_at(Instant::now() + LIMIT * 10), Ok(()));
    }

    /// A reconcile in flight past the limit with none finishing is a stall, named in the
    /// reason; finishing it clears the stall.
    #[test]
    fn a_stuck_reconcile_is_a_stall() {
        let h = Health::new(LIMIT);
        let guard = h.reconcile_started();
        let later = Instant::now() + LIMIT + Duration::from_secs(5);
        let reason = h.check_at(later).err().unwrap_or_default();
        assert!(
            reason.starts_with("controller stalled: 1 reconcile(s) in flight"),
            "{reason}"
        );
        assert_eq!(h.check_at(Instant::now() + LIMIT / 2), Ok(()));
        drop(guard);
        assert_eq!(h.check_at(later), Ok(()));
    }

    /// Once armed, a prober that stops beating is a stall; beating again clears it.
    #[test]
    fn a_silent_prober_is_a_stall() {
        let h = Health::new(LIMIT);
        let far = || Instant::now() + LIMIT + Duration::from_secs(5);
        assert_eq!(h.check_at(far()), Ok(()));
        let beat = h.prober();
        let reason = h.check_at(far()).err().unwrap_or_default();
        assert!(reason.starts_with("prober stalled"), "{reason}");
        beat.beat();
        assert_eq!(h.check_at(Instant::now()), Ok(()));
        Heartbeat::default().beat();
    }

    /// An election that cannot go on is reported at once, with its reason, until cleared.
    #[test]
    fn a_stalled_election_is_reported_until_cleared() {
        let h = Health::new(LIMIT);
        h.election_problem(Some("the Lease is missing".into()));
        assert_eq!(
            h.check_at(Instant::now()),
            Err("the Lease is missing".to_string())
        );
        h.election_problem(None);
        assert_eq!(h.check_at(Instant::now()), Ok(()));
    }
}
