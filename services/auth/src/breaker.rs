//! Circuit breaker for calls to the users service. A pure state machine: the caller passes
//! the current time, so tests drive it without sleeping.
//!
//! Closed: calls pass; consecutive failures are counted. At `failure_threshold` it opens.
//! Open: calls are refused at once (auth answers 503 instead of queueing on a dead
//! upstream) until `open_for` has passed. Half-open: one trial call passes; success closes
//! the breaker, failure opens it again. A trial that never reports back (its request was
//! cancelled) is replaced by a new one after `open_for`.
//!
//! Every call holds a [`Ticket`] naming the state generation it started in; each state change
//! starts a new generation, and a result reported with an older ticket is ignored. So only the
//! half-open trial can close the breaker — a slow call that began while it was still closed
//! and succeeds late cannot — and a late failure from before cannot re-open a closed one.

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

/// Permission for one call, from [`Breaker::try_acquire`]; hand it back with the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
}

/// The breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    generation: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed { failures: 0 },
            generation: 0,
        }
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.generation += 1;
    }

    fn ticket(&self) -> Ticket {
        Ticket {
            generation: self.generation,
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
    pub fn try_acquire(&mut self, now: Instant) -> Result<Ticket, Refused> {
        match self.state {
            State::Closed { .. } => Ok(self.ticket()),
            State::Open { until } if now < until => Err(Refused {
                retry_after: until - now,
            }),
            State::HalfOpen { since } if now.duration_since(since) < self.config.open_for => {
                Err(Refused {
                    retry_after: self.config.open_for - now.duration_since(since),
                })
            }
            // Open past its period, or a trial lost for a whole period: a new trial.
            State::Open { .. } | State::HalfOpen { .. } => {
                self.enter(State::HalfOpen { since: now });
                Ok(self.ticket())
            }
        }
    }

    /// Reports a successful call. Ignored when the breaker changed state since the call
    /// started.
    pub fn on_success(&mut self, ticket: Ticket) {
        if ticket.generation != self.generation {
            return;
        }
        match self.state {
            State::Closed { failures: 0 } => {}
            State::Closed { .. } => self.state = State::Closed { failures: 0 },
            State::HalfOpen { .. } => self.enter(State::Closed { failures: 0 }),
            State::Open { .. } => {}
        }
    }

    /// Reports a failed call at `now`. Ignored when the breaker changed state since the call
    /// started.
    pub fn on_failure(&mut self, ticket: Ticket, now: Instant) {
        if ticket.generation != self.generation {
            return;
        }
        match self.state {
            State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                self.state = State::Closed {
                    failures: failures + 1,
                };
            }
            State::Closed { .. } | State::HalfOpen { .. } => self.enter(State::Open {
                until: now + self.config.open_for,
            }),
            State::Open { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_secs(10),
    };

    fn opened(t0: Instant) -> Breaker {
        let mut b = Breaker::new(CFG);
        for _ in 0..3 {
            let t = b.try_acquire(t0).expect("closed");
            b.on_failure(t, t0);
        }
        b
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        // Fewer failures than the threshold keep it closed; a success resets the count.
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        let t = b.try_acquire(t0).expect("closed");
        b.on_failure(t, t0);
        b.on_failure(t, t0);
        b.on_success(t);
        b.on_failure(t, t0);
        b.on_failure(t, t0);
        assert_eq!(b.state_name(), "closed");
        b.on_failure(t, t0);
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
        let mut b = opened(t0);
        let t1 = t0 + CFG.open_for;
        let trial = b.try_acquire(t1).expect("trial");
        assert_eq!(b.state_name(), "half_open");
        assert!(b.try_acquire(t1).is_err(), "only one trial at a time");
        b.on_failure(trial, t1);
        assert_eq!(
            b.state(),
            State::Open {
                until: t1 + CFG.open_for
            }
        );
        let t2 = t1 + CFG.open_for;
        let trial = b.try_acquire(t2).expect("trial");
        b.on_success(trial);
        assert_eq!(b.state(), State::Closed { failures: 0 });
    }

    #[test]
    fn only_the_trial_closes_and_stale_results_are_ignored() {
        // While half-open, results of calls that started before the breaker opened neither
        // close nor re-open it; the trial's own result decides, and is itself stale after.
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        let slow = b.try_acquire(t0).expect("closed");
        for _ in 0..3 {
            let t = b.try_acquire(t0).expect("closed");
            b.on_failure(t, t0);
        }
        let t1 = t0 + CFG.open_for;
        let trial = b.try_acquire(t1).expect("trial");
        b.on_success(slow);
        assert_eq!(
            b.state_name(),
            "half_open",
            "a stale success closed the breaker"
        );
        b.on_failure(slow, t1);
        assert_eq!(b.state_name(), "half_open", "a stale failure re-opened it");
        b.on_success(trial);
        assert_eq!(b.state_name(), "closed");
        for _ in 0..3 {
            b.on_failure(trial, t1);
        }
        assert_eq!(
            b.state_name(),
            "closed",
            "the trial's ticket is stale once closed"
        );
    }

    #[test]
    fn stale_success_from_before_opening_is_ignored_on_one_breaker() {
        // The same breaker: a call started while closed succeeds after the breaker opened.
        let t0 = Instant::now();
        let mut b = Breaker::new(CFG);
        let slow = b.try_acquire(t0).expect("closed");
        for _ in 0..3 {
            let t = b.try_acquire(t0).expect("closed");
            b.on_failure(t, t0);
        }
        assert_eq!(b.state_name(), "open");
        b.on_success(slow);
        assert_eq!(b.state_name(), "open");
    }

    #[test]
    fn lost_trial_is_replaced() {
        // A trial that never reports back does not wedge the breaker half-open.
        let t0 = Instant::now();
        let mut b = opened(t0);
        assert!(b.try_acquire(t0 + CFG.open_for).is_ok());
        assert!(b.try_acquire(t0 + CFG.open_for * 2).is_ok());
    }
}
