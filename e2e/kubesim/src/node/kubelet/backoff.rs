//! The kubelet's crash-loop back-off: the first restart is immediate, then the delay doubles from
//! the base (10s in the real kubelet) up to the cap (300s), measured from the last start. A run
//! that lasted longer than twice the cap resets the back-off. Pure.

use std::time::Duration;

/// Back-off parameters; `NodeConfig` carries them so tests can use a small base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before the `n`th consecutive restart (n = 1 is the first).
    pub fn delay(&self, n: u32) -> Duration {
        if n <= 1 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(n - 2).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Whether a run of `ran` resets the consecutive-restart count.
    pub fn resets_after(&self, ran: Duration) -> bool {
        ran > self.max * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_base_up_to_the_cap() {
        // 0, 10s, 20s, 40s, ... 300s: the real kubelet's schedule.
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.delay(100), Duration::from_secs(300));
        assert!(b.resets_after(Duration::from_secs(601)));
        assert!(!b.resets_after(Duration::from_secs(600)));
    }
}
