//! What the failover benchmarks measure with, besides the tests' cluster harness: a random
//! probe phase before each fault, and the client error window after it.

use std::time::{Duration, Instant};

/// Waits a random part of `period` (the probe period that will notice the fault next), so a
/// fault injected next falls at a random point of the probe schedule, as a real one does.
/// Without it, a benchmark that injects a fault a fixed time after the previous run recovered
/// lands at the same point of the schedule every run and measures that point instead of the
/// distribution.
pub async fn random_phase(period: Duration) {
    tokio::time::sleep(period.mul_f64(rand::random_range(0.0..1.0))).await;
}

/// The failed requests among `outcomes` since `from`, and the client error window: from the
/// first to the last of them, in seconds (0 when none failed).
pub fn failures_since(outcomes: Vec<(Instant, bool)>, from: Instant) -> (Vec<Instant>, f64) {
    let errors: Vec<Instant> = outcomes
        .into_iter()
        .filter(|(t, ok)| *t >= from && !ok)
        .map(|(t, _)| t)
        .collect();
    let window = match (errors.first(), errors.last()) {
        (Some(a), Some(b)) => (*b - *a).as_secs_f64(),
        _ => 0.0,
    };
    (errors, window)
}
