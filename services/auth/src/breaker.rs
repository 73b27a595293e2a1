//! Circuit breaker for calls to the users service. A pure state machine: the caller passes
//! the current time, so tests drive it without sleeping.
//!
//! Closed: calls pass; consecutive failures are counted. At `failure_threshold` it opens.
//! Open: calls are refused at once (auth answers 503 instead of queueing on a dead
//! upstream) until `open_for` has passed. Half-open: one trial call passes; success closes
//! the breaker, failure opens it again. A trial that never reports back (its request was
//! cancelled) is replaced by a new one after `open_for`.

use std::time::{Duration, Instant};

/// Breaker tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before a trial call.
    pub open_for: Duration,
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls pass; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Calls are refused until `until`.
    Open {
        /// When a trial call becomes possible.
        until: Instant,
    },
    /// One trial call is in flight since `since`.
    HalfOpen {
        /// When the trial started.
        since: Instant,
    },
}

/// Returned when the breaker refuses a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open: users service failing, retry after {retry_after:?}")]
pub struct Refused {
    /// Time until a trial call may pass.
    pub retry_after: Duration,
}

/// The breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed { failures: 0 },
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Stable name of the state, for metrics and logs.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    /// Asks to make a call at `now`.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Refused> {
        match self.state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now < until => Err(Refused {
                retry_after: until - now,
            }),
            State::Open { .. } => {
                self.state = State::HalfOpen { since: now };
                Ok(())
            }
            State::HalfOpen { since } if now.duration_since(since) < self.config.open_for => {
                Err(Refused {
                    retry_after: self.config.open_for - now.duration_since(since),
                })
            }
            State::HalfOpen { .. } => {
                self.state = State::HalfOpen { since: now };
                Ok(())
            }
        }
    }

    /// Reports a successful call.
    pub fn on_success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// Reports a failed call at `now`.
    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            State::Closed { .. } | State::HalfOpen { .. } | State::Open { .. } => State::Open {
                until: now + self.config.open_for,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_secs(10),
    };

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        // Fewer failures than the threshold keep it closed; a success resets the count.
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success();
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state_name(), "closed");
        assert!(b.try_acquire(t0).is_ok());
        b.on_failure(t0);
        assert_eq!(b.state_name(), "open");
        let refused = b
            .try_acquire(t0 + Duration::from_secs(4))
            .expect_err("open");
        assert_eq!(refused.retry_after, Duration::from_secs(6));
    }

    #[test]
    fn half_open_trial_closes_or_reopens() {
        // After open_for one trial passes; its outcome decides the next state.
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let t1 = t0 + CFG.open_for;
        assert!(b.try_acquire(t1).is_ok());
        assert_eq!(b.state_name(), "half_open");
        assert!(b.try_acquire(t1).is_err(), "only one trial at a time");
        b.on_failure(t1);
        assert_eq!(
            b.state(),
            State::Open {
                until: t1 + CFG.open_for
            }
        );
        let t2 = t1 + CFG.open_for;
        assert!(b.try_acquire(t2).is_ok());
        b.on_success();
        assert_eq!(b.state(), State::Closed { failures: 0 });
    }

    #[test]
    fn lost_trial_is_replaced() {
        // A trial that never reports back does not wedge the breaker half-open.
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        for _ in 0..3 {
            b.on_failure(t0);
        }
        assert!(b.try_acquire(t0 + CFG.open_for).is_ok());
        assert!(b.try_acquire(t0 + CFG.open_for * 2).is_ok());
    }
}
