//! The error ratio judged at a pod's heartbeats: a pod whose readiness watch lines carry its
//! cumulative API request and 5xx counts (`requests=<n> errors=<m>`, see `services/README.md`)
//! is judged against `maxErrorRate` each time a heartbeat closes a *span* of its traffic,
//! instead of once per metrics scrape over `errorRateWindowSeconds`.
//!
//! A span is the stretch from one counted line to the first later one with at least
//! [`MIN_SPAN_REQUESTS`] more requests: one heartbeat at a busy pod, several at a quiet one.
//! The pod fails on error rate when each of its last `failureThreshold` spans has a 5xx ratio
//! above `maxErrorRate`, the newest of them within `errorRateWindowSeconds`, so one bad span,
//! or a handful of requests, never ejects a pod. A pod with too little traffic to fill a span
//! within the window is judged by its scraped window only, as are pods whose lines carry no
//! counts. Pure: counts and times in, a ratio out; no data is never a failure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::error_rate::Counts;

/// Fewest requests in one span: with the default threshold of two spans, a pod is judged at
/// its heartbeats on 20 requests at least.
pub const MIN_SPAN_REQUESTS: f64 = 10.0;

/// Closed spans kept; more than any failure threshold in use.
const KEPT: usize = 16;

/// One closed span of a pod's traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    /// When its last line came.
    end: Instant,
    total: f64,
    errors: f64,
}

/// The spans of one pod's counted watch lines.
#[derive(Debug, Clone, Default)]
pub struct ErrorSpans {
    /// Where the open span starts: the line and its counts.
    start: Option<(Instant, Counts)>,
    /// Closed spans, oldest first.
    closed: VecDeque<Span>,
}

impl ErrorSpans {
    /// Forgets everything (a new watch starts from its first line).
    pub fn reset(&mut self) {
        self.start = None;
        self.closed.clear();
    }

    /// Takes the counts of one line at `at`; `true` when they closed a span. A span still short
    /// of [`MIN_SPAN_REQUESTS`] after `window` starts again from these counts; counts lower than
    /// before (the process restarted) start over.
    pub fn record(&mut self, at: Instant, counts: Counts, window: Duration) -> bool {
        let Some((since, base)) = self.start else {
            self.start = Some((at, counts));
            return false;
        };
        if counts.total < base.total || counts.errors < base.errors {
            self.reset();
            self.start = Some((at, counts));
            return false;
        }
        let total = counts.total - base.total;
        if total < MIN_SPAN_REQUESTS {
            if at.saturating_duration_since(since) > window {
                self.start = Some((at, counts));
            }
            return false;
        }
        self.closed.push_back(Span {
            end: at,
            total,
            errors: (counts.errors - base.errors).clamp(0.0, total),
        });
        if self.closed.len() > KEPT {
            self.closed.pop_front();
        }
        self.start = Some((at, counts));
        true
    }

    /// The 5xx ratio of the last `spans` spans when each of them is above `max` and the oldest
    /// of them ended within `window` before `now`; `None` otherwise (including too few spans).
    pub fn failing(&self, spans: u32, max: f64, now: Instant, window: Duration) -> Option<f64> {
        let n = usize::try_from(spans.max(1)).unwrap_or(usize::MAX);
        let recent = self
            .closed
            .len()
            .checked_sub(n)
            .map(|i| self.closed.range(i..))?;
        let (mut total, mut errors) = (0.0, 0.0);
        for (i, s) in recent.enumerate() {
            if i == 0 && now.saturating_duration_since(s.end) > window {
                return None;
            }
            if s.errors / s.total <= max {
                return None;
            }
            total += s.total;
            errors += s.errors;
        }
        Some(errors / total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(2);
    const BEAT: Duration = Duration::from_millis(250);

    fn c(total: f64, errors: f64) -> Counts {
        Counts {
            total,
            errors,
            probes: 0.0,
        }
    }

    /// Feeds `lines` (cumulative counts) one heartbeat apart from `t0`; the time of the last.
    fn feed(s: &mut ErrorSpans, t0: Instant, lines: &[(f64, f64)]) -> Instant {
        let mut at = t0;
        for (i, &(total, errors)) in lines.iter().enumerate() {
            at = t0 + BEAT * u32::try_from(i).unwrap_or(0);
            s.record(at, c(total, errors), W);
        }
        at
    }

    #[test]
    fn sustained_errors_fail_after_the_threshold_of_spans() {
        // Each span above the limit counts; the pod fails only when the threshold's worth of
        // spans in a row all are, and their joint ratio is reported.
        let t0 = Instant::now();
        let mut s = ErrorSpans::default();
        let at = feed(&mut s, t0, &[(0.0, 0.0), (40.0, 0.0), (80.0, 30.0)]);
        assert_eq!(s.failing(2, 0.5, at, W), None, "one bad span is not enough");
        let at = feed(&mut s, at + BEAT, &[(120.0, 70.0)]);
        assert_eq!(s.failing(2, 0.5, at, W), Some(70.0 / 80.0));
        assert_eq!(s.failing(3, 0.5, at, W), None, "the span before was fine");
        let at = feed(&mut s, at + BEAT, &[(160.0, 80.0)]);
        assert_eq!(s.failing(2, 0.5, at, W), None, "a span at the limit passes");
    }

    #[test]
    fn too_few_requests_are_not_judged() {
        // Under the floor a span stays open across heartbeats, and after a window without
        // enough traffic it starts again: a few failed requests never eject a pod.
        let t0 = Instant::now();
        let mut s = ErrorSpans::default();
        let lines: Vec<(f64, f64)> = (0..12).map(|i| (f64::from(i), f64::from(i))).collect();
        let at = feed(&mut s, t0, &lines);
        assert_eq!(s.failing(1, 0.5, at, W), None);
        // Enough requests over a few heartbeats close a span.
        let at = feed(
            &mut s,
            at + BEAT,
            &[(14.0, 14.0), (19.0, 19.0), (25.0, 25.0)],
        );
        assert_eq!(s.failing(1, 0.5, at, W), Some(1.0));
    }

    #[test]
    fn old_spans_and_restarts_say_nothing() {
        // Failing spans older than the window no longer count (an ejected pod gets no traffic to
        // prove itself with), and counters that went down start over.
        let t0 = Instant::now();
        let mut s = ErrorSpans::default();
        let at = feed(&mut s, t0, &[(0.0, 0.0), (20.0, 20.0), (40.0, 40.0)]);
        assert_eq!(s.failing(2, 0.5, at, W), Some(1.0));
        assert_eq!(s.failing(2, 0.5, at + W + BEAT * 2, W), None);
        let at = feed(&mut s, at + BEAT, &[(5.0, 5.0), (30.0, 30.0)]);
        assert_eq!(s.failing(1, 0.5, at, W), Some(1.0));
        assert_eq!(
            s.failing(2, 0.5, at, W),
            None,
            "the restart forgot the spans before"
        );
    }
}
