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
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Counts {
    /// All requests.
    pub total: f64,
    /// Requests answered with a 5xx status.
    pub errors: f64,
    /// Requests of the probes and scrapes themselves (see [`is_probe_series`]), part of
    /// `total`; `total - probes` is the API traffic the sticky-connection check watches.
    pub probes: f64,
}

/// Conventional health and metrics paths: series labelled with one of them (`route`, `path`,
/// `handler` or `endpoint`) count probes and scrapes, not API traffic.
pub const PROBE_PATHS: [&str; 6] = [
    "/readyz", "/healthz", "/livez", "/metrics", "/ready", "/health",
];

/// Whether a sample counts the prober's, the kubelet's or a scraper's own requests: an HTTP
/// series labelled with a [`PROBE_PATHS`] path, or a gRPC series of the standard health service.
pub fn is_probe_series(s: &Sample) -> bool {
    SeriesLabels::of(s).probe
}

/// What a series' labels say about its requests, read one label at a time (as
/// `promtext::visit_line` hands them over, values as written: the values compared here have
/// no character that would be escaped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesLabels<'a> {
    status: Option<&'a str>,
    code: Option<&'a str>,
    grpc_code: Option<&'a str>,
    /// The series counts probes and scrapes (see [`is_probe_series`]).
    pub probe: bool,
    /// The `le` label of a histogram bucket.
    pub le: Option<&'a str>,
}

impl<'a> SeriesLabels<'a> {
    /// Takes one label.
    pub fn see(&mut self, key: &'a str, value: &'a str) {
        match key {
            "status" => self.status = self.status.or(Some(value)),
            "code" => self.code = self.code.or(Some(value)),
            "grpc_code" => self.grpc_code = self.grpc_code.or(Some(value)),
            "grpc_service" => self.probe |= value == "grpc.health.v1.Health",
            "route" | "path" | "handler" | "endpoint" => self.probe |= PROBE_PATHS.contains(&value),
            "le" => self.le = self.le.or(Some(value)),
            _ => {}
        }
    }

    /// The labels of a parsed sample.
    pub fn of(s: &'a Sample) -> Self {
        let mut l = Self::default();
        for (k, v) in &s.labels {
            l.see(k, v);
        }
        l
    }

    /// What a sample of `http_requests_total` with these labels and `value` adds to the
    /// counts: an error when its `status` (or `code`) is a 5xx. `None` for values that cannot
    /// be counter values (negative, NaN, infinite).
    pub fn http_counts(&self, value: f64) -> Option<Counts> {
        let status = self.status.or(self.code).unwrap_or("");
        let error = status.len() == 3 && status.starts_with('5');
        self.counts(value, error)
    }

    /// What a sample of `grpc_server_handled_total` with these labels and `value` adds: an
    /// error when its `grpc_code` is a failing code ([`is_failing_grpc_code`]).
    pub fn grpc_counts(&self, value: f64) -> Option<Counts> {
        self.counts(value, is_failing_grpc_code(self.grpc_code.unwrap_or("")))
    }

    fn counts(&self, value: f64, error: bool) -> Option<Counts> {
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        Some(Counts {
            total: value,
            errors: if error { value } else { 0.0 },
            probes: if self.probe { value } else { 0.0 },
        })
    }
}

/// Sums `http_requests_total` over all series; a series is an error when its `status` (or `code`)
/// label is a 5xx. `None` when the metric is absent.
pub fn counts(samples: &[Sample]) -> Option<Counts> {
    let mut found = false;
    let mut c = Counts::default();
    for s in samples.iter().filter_map(sample_counts) {
        found = true;
        c.total += s.total;
        c.errors += s.errors;
        c.probes += s.probes;
    }
    found.then_some(c)
}

/// What one sample adds to the counts: `None` for other metrics and for values that cannot be
/// counter values (negative, NaN, infinite).
pub fn sample_counts(s: &Sample) -> Option<Counts> {
    if s.name != REQUESTS_METRIC {
        return None;
    }
    SeriesLabels::of(s).http_counts(s.value)
}

/// The gRPC server counter that is read for gRPC services (the Prometheus gRPC middlewares'
/// name), labelled `grpc_code`.
pub const GRPC_REQUESTS_METRIC: &str = "grpc_server_handled_total";

/// The code name as the gRPC middlewares label it (`OK`, `Unavailable`, ...).
///
/// The sample `orders` service has the same table for its `grpc_code` label. It is not shared:
/// services must not depend on the operator, the operator must not depend on a sample service,
/// and `flotilla-crds` holds the Kubernetes API (it would need `tonic` for a table that is not
/// part of that API). The names are fixed by the gRPC specification and both sides are tested
/// against them, so the copies cannot drift silently.
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
    if s.name != GRPC_REQUESTS_METRIC {
        return None;
    }
    SeriesLabels::of(s).grpc_counts(s.value)
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
        Some(Counts {
            total,
            errors,
            probes: 0.0,
        })
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
    fn probe_and_scrape_series_are_told_apart_from_api_traffic() {
        // The sticky-connection check counts API requests only: series of health and metrics
        // paths, and of the gRPC health service, are the prober's own traffic.
        let s = parse(
            "http_requests_total{route=\"/readyz\",status=\"200\"} 40\n\
             http_requests_total{route=\"/users\",status=\"200\"} 7\n\
             http_requests_total{handler=\"/metrics\",code=\"200\"} 3\n\
             grpc_server_handled_total{grpc_service=\"grpc.health.v1.Health\",grpc_code=\"OK\"} 9\n",
        )
        .expect("valid");
        let c = counts(&s).expect("found");
        assert_eq!((c.total, c.probes), (50.0, 43.0));
        let g = s
            .iter()
            .filter_map(grpc_sample_counts)
            .fold(0.0, |a, c| a + c.probes);
        assert_eq!(g, 9.0);
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
