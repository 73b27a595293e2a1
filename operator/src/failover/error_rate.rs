//! The error ratio of a pod over a sliding window, from successive scrapes of its cumulative
//! request counters: 5xx answers in `http_requests_total`, or for a gRPC service failing codes
//! in `grpc_server_handled_total`.
//!
//! No data is never a failure: a missing metric, no requests in the window or a counter reset
//! yield `None`, and the readiness probe alone decides. Pure: snapshots and times in, a ratio out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::promtext::Sample;

/// The counter that is read.
pub const REQUESTS_METRIC: &str = "http_requests_total";

/// Request totals from one scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counts {
    /// All requests.
    pub total: f64,
    /// Requests answered with a 5xx status.
    pub errors: f64,
}

/// Sums `http_requests_total` over all series; a series is an error when its `status` (or `code`)
/// label is a 5xx. `None` when the metric is absent.
pub fn counts(samples: &[Sample]) -> Option<Counts> {
    let mut found = false;
    let mut c = Counts {
        total: 0.0,
        errors: 0.0,
    };
    for s in samples.iter().filter_map(sample_counts) {
        found = true;
        c.total += s.total;
        c.errors += s.errors;
    }
    found.then_some(c)
}

/// What one sample adds to the counts: `None` for other metrics and for values that cannot be
/// counter values (negative, NaN, infinite).
pub fn sample_counts(s: &Sample) -> Option<Counts> {
    if s.name != REQUESTS_METRIC || !s.value.is_finite() || s.value < 0.0 {
        return None;
    }
    let status = s.label("status").or_else(|| s.label("code")).unwrap_or("");
    let error = status.len() == 3 && status.starts_with('5');
    Some(Counts {
        total: s.value,
        errors: if error { s.value } else { 0.0 },
    })
}

/// The gRPC server counter that is read for gRPC services (the Prometheus gRPC middlewares'
/// name), labelled `grpc_code`.
pub const GRPC_REQUESTS_METRIC: &str = "grpc_server_handled_total";

/// The code name as the gRPC middlewares label it (`OK`, `Unavailable`, ...).
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Whether a `grpc_code` label value is a server-side failure, the gRPC analogue of a 5xx:
/// Unknown, DeadlineExceeded, Internal, Unavailable or DataLoss. Client mistakes
/// (InvalidArgument, NotFound, Unauthenticated, ...) are not. Accepts the CamelCase names, the
/// upper-case spec names and the numeric codes, as exporters differ.
pub fn is_failing_grpc_code(code: &str) -> bool {
    let name = code.replace('_', "").to_ascii_lowercase();
    matches!(
        name.as_str(),
        "unknown"
            | "deadlineexceeded"
            | "internal"
            | "unavailable"
            | "dataloss"
            | "2"
            | "4"
            | "13"
            | "14"
            | "15"
    )
}

/// What one sample of `grpc_server_handled_total` adds to the counts: an error when its
/// `grpc_code` is a failing code ([`is_failing_grpc_code`]). `None` for other metrics and for
/// values that cannot be counter values.
pub fn grpc_sample_counts(s: &Sample) -> Option<Counts> {
    if s.name != GRPC_REQUESTS_METRIC || !s.value.is_finite() || s.value < 0.0 {
        return None;
    }
    let error = is_failing_grpc_code(s.label("grpc_code").unwrap_or(""));
    Some(Counts {
        total: s.value,
        errors: if error { s.value } else { 0.0 },
    })
}

/// Scrape history of one pod.
#[derive(Debug, Clone)]
pub struct ErrorWindow {
    window: Duration,
    snaps: VecDeque<(Instant, Counts)>,
}

impl ErrorWindow {
    /// An empty history over `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            snaps: VecDeque::new(),
        }
    }

    /// Records a scrape (or its absence) and returns the 5xx ratio over the window, if there was
    /// traffic in it.
    pub fn record(&mut self, at: Instant, counts: Option<Counts>) -> Option<f64> {
        let Some(now) = counts else {
            self.snaps.clear();
            return None;
        };
        if self
            .snaps
            .back()
            .is_some_and(|(_, last)| now.total < last.total || now.errors < last.errors)
        {
            // The process restarted and its counters began again.
            self.snaps.clear();
        }
        self.snaps.push_back((at, now));
        // Keep the newest snapshot at or before the window start as the baseline; drop older ones.
        let start = at.checked_sub(self.window);
        while let (Some(start), Some((t1, _))) = (start, self.snaps.get(1)) {
            if *t1 <= start {
                self.snaps.pop_front();
            } else {
                break;
            }
        }
        let (_, base) = self.snaps.front()?;
        let total = now.total - base.total;
        let errors = now.errors - base.errors;
        (total > 0.0).then(|| (errors / total).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::promtext::parse;

    fn c(total: f64, errors: f64) -> Option<Counts> {
        Some(Counts { total, errors })
    }

    #[test]
    fn counts_sum_series_and_classify_5xx() {
        // Every series of the counter counts; only 5xx statuses are errors.
        let s = parse(
            "http_requests_total{status=\"200\"} 90\nhttp_requests_total{status=\"503\"} 6\n\
             http_requests_total{status=\"500\"} 4\nhttp_requests_total{status=\"404\"} 10\nother 5\n",
        )
        .expect("valid");
        assert_eq!(counts(&s), c(110.0, 10.0));
        assert_eq!(counts(&parse("other 1\n").expect("valid")), None);
    }

    #[test]
    fn grpc_counts_classify_server_failures() {
        // For gRPC, Unavailable/Internal/Unknown/DeadlineExceeded count as errors whatever the
        // spelling; client errors such as NotFound do not, and the HTTP counter is ignored.
        let s = parse(
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Get\"} 80\n\
             grpc_server_handled_total{grpc_code=\"Unavailable\"} 5\n\
             grpc_server_handled_total{grpc_code=\"INTERNAL\"} 3\n\
             grpc_server_handled_total{grpc_code=\"4\"} 2\n\
             grpc_server_handled_total{grpc_code=\"NotFound\"} 10\n\
             http_requests_total{status=\"500\"} 7\n",
        )
        .expect("valid");
        let sum = s
            .iter()
            .filter_map(grpc_sample_counts)
            .fold((0.0, 0.0), |(t, e), c| (t + c.total, e + c.errors));
        assert_eq!(sum, (100.0, 10.0));
        assert_eq!(
            grpc_code_name(tonic::Code::DeadlineExceeded),
            "DeadlineExceeded"
        );
        assert!(is_failing_grpc_code(grpc_code_name(tonic::Code::Unknown)));
        assert!(!is_failing_grpc_code(grpc_code_name(
            tonic::Code::Unauthenticated
        )));
    }

    #[test]
    fn ratio_over_window_uses_deltas() {
        // The ratio is of the requests inside the window, not of the lifetime totals.
        let t0 = Instant::now();
        let mut w = ErrorWindow::new(Duration::from_secs(10));
        assert_eq!(w.record(t0, c(1000.0, 0.0)), None);
        let r = w.record(t0 + Duration::from_secs(5), c(1100.0, 50.0));
        assert_eq!(r, Some(0.5));
        // After the window slides past the errors, the ratio falls again.
        let r = w.record(t0 + Duration::from_secs(16), c(1200.0, 50.0));
        assert_eq!(r, Some(0.0));
    }

    #[test]
    fn no_data_is_not_a_failure() {
        // No traffic, no metric, or a reset gives no ratio.
        let t0 = Instant::now();
        let mut w = ErrorWindow::new(Duration::from_secs(10));
        w.record(t0, c(10.0, 1.0));
        assert_eq!(w.record(t0 + Duration::from_secs(1), c(10.0, 1.0)), None);
        assert_eq!(w.record(t0 + Duration::from_secs(2), None), None);
        w.record(t0 + Duration::from_secs(3), c(100.0, 0.0));
        assert_eq!(w.record(t0 + Duration::from_secs(4), c(5.0, 5.0)), None);
    }
}
