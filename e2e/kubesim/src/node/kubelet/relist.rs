//! When the kubelet notices that a container exited on its own. A real kubelet does not wait on
//! its containers: its pod lifecycle event generator (PLEG) relists the runtime's containers
//! every second and only then reports the exit, marks the container not ready and restarts it.
//! So a crashed pod stays in its Service's endpoints for 0–1 s after its process died (longer if
//! its readiness probe notices first, it is taken out then). kubesim waits on its processes, so
//! it sees exits at once; [`Relist`] delays acting on one to the next tick of a node-wide relist
//! clock. Exits the kubelet causes itself (liveness kills, pod deletion) are synchronous in a real
//! kubelet too and are not delayed. Pure but for the wait.

use std::time::{Duration, Instant};

/// The node's relist clock: ticks every `period` from `epoch`, the same phase for every pod.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Relist {
    epoch: Instant,
    period: Duration,
}

impl Relist {
    /// A clock ticking every `period` from now; a zero period notices exits at once.
    pub fn new(period: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            period,
        }
    }

    /// The first tick strictly after `exited`: when an exit at `exited` is noticed (`exited`
    /// itself with a zero period).
    pub fn noticed_at(&self, exited: Instant) -> Instant {
        if self.period.is_zero() {
            return exited;
        }
        let since = exited.saturating_duration_since(self.epoch).as_nanos();
        let period = self.period.as_nanos();
        let ticks = since / period + 1;
        let offset = u64::try_from(ticks.saturating_mul(period)).unwrap_or(u64::MAX);
        self.epoch + Duration::from_nanos(offset)
    }

    /// Whether exits are noticed at once.
    pub fn is_instant(&self) -> bool {
        self.period.is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_is_noticed_at_the_next_tick_of_the_shared_clock() {
        // Noticed strictly after the exit, at most one period later, on the clock's phase.
        let relist = Relist::new(Duration::from_millis(1000));
        let e = relist.epoch;
        let at = |ms| e + Duration::from_millis(ms);
        assert_eq!(relist.noticed_at(at(0)), at(1000));
        assert_eq!(relist.noticed_at(at(1)), at(1000));
        assert_eq!(relist.noticed_at(at(999)), at(1000));
        assert_eq!(relist.noticed_at(at(1000)), at(2000));
        assert_eq!(relist.noticed_at(at(4321)), at(5000));
    }

    #[test]
    fn a_zero_period_notices_at_once() {
        // 0 keeps kubesim's instant notice.
        let relist = Relist::new(Duration::ZERO);
        let t = Instant::now() + Duration::from_millis(1234);
        assert_eq!(relist.noticed_at(t), t);
        assert!(relist.is_instant());
    }
}
