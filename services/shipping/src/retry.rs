//! Backoff, as plain values: when a failed event is tried again, and how long the consumer
//! waits before reconnecting to the broker. Pure; the consumer acts on the answers.

use std::time::Duration;

/// How failed events are retried: `max_attempts` handling attempts in all, the n-th retry
/// after `base * 2^(n-1)`, never longer than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Handling attempts of one event, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub base: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
}

/// What to do with an event whose handling failed transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after the delay; `attempts` failed so far (carried in the retry header).
    Retry {
        /// Wait before the next attempt.
        delay: Duration,
        /// Failed attempts so far.
        attempts: u32,
    },
    /// Every attempt is used up: dead-letter it.
    GiveUp,
}

impl RetryPolicy {
    /// The decision after `failed` attempts of an event failed (1 after the first failure).
    pub fn after_failure(&self, failed: u32) -> AfterFailure {
        if failed >= self.max_attempts {
            return AfterFailure::GiveUp;
        }
        AfterFailure::Retry {
            delay: doubled(self.base, failed.saturating_sub(1), self.max),
            attempts: failed,
        }
    }
}

/// `base * 2^doublings`, capped at `max` (and without overflow).
fn doubled(base: Duration, doublings: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

/// The wait between attempts to reach the broker: 250 ms, doubling up to a cap, back to the
/// start once a connection held. A broker that is down is asked at most every `max`; one that
/// blipped is asked again at once.
#[derive(Debug, Clone)]
pub struct Reconnect {
    next: Duration,
    max: Duration,
}

/// The first wait after a lost connection.
pub const RECONNECT_MIN: Duration = Duration::from_millis(250);

impl Reconnect {
    /// Starts at [`RECONNECT_MIN`], capped at `max` (at least the minimum).
    pub fn new(max: Duration) -> Self {
        Self {
            next: RECONNECT_MIN,
            max: max.max(RECONNECT_MIN),
        }
    }

    /// The wait before the next attempt; each call doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = doubled(self.next, 1, self.max);
        delay
    }

    /// A connection held: the next loss starts again at the minimum.
    pub fn reset(&mut self) {
        self.next = RECONNECT_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_secs(1),
        max: Duration::from_secs(5),
    };

    #[test]
    fn retries_double_up_to_the_cap_then_give_up() {
        // Each failure waits twice as long as the one before, never beyond the cap, and the
        // attempt that uses the last allowance dead-letters instead of retrying.
        let decisions: Vec<_> = (1..=5).map(|n| POLICY.after_failure(n)).collect();
        let secs = |s| Duration::from_secs(s);
        assert_eq!(
            decisions,
            vec![
                AfterFailure::Retry {
                    delay: secs(1),
                    attempts: 1
                },
                AfterFailure::Retry {
                    delay: secs(2),
                    attempts: 2
                },
                AfterFailure::Retry {
                    delay: secs(4),
                    attempts: 3
                },
                AfterFailure::Retry {
                    delay: secs(5),
                    attempts: 4
                },
                AfterFailure::GiveUp,
            ]
        );
        assert_eq!(POLICY.after_failure(u32::MAX), AfterFailure::GiveUp);
    }

    #[test]
    fn one_attempt_means_no_retry_and_huge_counts_do_not_overflow() {
        // max_attempts 1 dead-letters on the first failure; a far-off attempt number still
        // waits only the cap.
        let once = RetryPolicy {
            max_attempts: 1,
            ..POLICY
        };
        assert_eq!(once.after_failure(1), AfterFailure::GiveUp);
        let many = RetryPolicy {
            max_attempts: u32::MAX,
            ..POLICY
        };
        assert_eq!(
            many.after_failure(200),
            AfterFailure::Retry {
                delay: POLICY.max,
                attempts: 200
            }
        );
    }

    #[test]
    fn reconnect_waits_double_to_the_cap_and_reset() {
        // A broker that stays down is asked ever less often, up to the cap; after a connection
        // held, the next loss is retried quickly again.
        let mut r = Reconnect::new(Duration::from_secs(2));
        let waits: Vec<_> = (0..6).map(|_| r.next_delay().as_millis()).collect();
        assert_eq!(waits, vec![250, 500, 1000, 2000, 2000, 2000]);
        r.reset();
        assert_eq!(r.next_delay(), RECONNECT_MIN);
        let mut tiny = Reconnect::new(Duration::from_millis(1));
        assert_eq!(tiny.next_delay(), RECONNECT_MIN);
        assert_eq!(tiny.next_delay(), RECONNECT_MIN);
    }
}
