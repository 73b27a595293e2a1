//! Bounded reading of a pod's Prometheus metrics: the body is parsed as it streams in, only the
//! request counter the error-rate check reads is kept (summed as it goes), with, when traffic
//! figures are asked for, the API requests' latency histogram (`_bucket` samples summed by
//! bound, probe and metrics routes excluded), and every scrape is
//! capped in bytes, in series and in line length, like Prometheus's own `body_size_limit` and
//! `sample_limit`. A scrape over a cap gives no data for that round (counted by reason), never a
//! failure verdict: a pod is judged by its readiness, not by how verbose its metrics are.
//!
//! Memory per scrape is one partial line (at most `max_line_bytes`) plus the HTTP read buffer
//! and a dozen histogram buckets, whatever the body size. Pure: bytes in, counts or a rejection
//! out; the HTTP side is in `probe.rs`.

use super::error_rate::{Counts, SeriesLabels, GRPC_REQUESTS_METRIC, REQUESTS_METRIC};
use super::histogram::Histogram;
use super::promtext::{self, Visited};
use super::traffic::TrafficSample;

/// The latency histogram read for HTTP services (its `_bucket` samples).
pub const DURATION_BUCKETS: &str = "http_request_duration_seconds_bucket";
/// The latency histogram read for gRPC services (the Prometheus gRPC middlewares' name).
pub const GRPC_DURATION_BUCKETS: &str = "grpc_server_handling_seconds_bucket";

/// Most distinct bucket bounds kept from one scrape: client libraries default to a dozen, and
/// a histogram with more is not read (its scrape still gives the counts), so an exposition
/// cannot grow the scanner past a few KiB.
pub const MAX_BUCKETS: usize = 64;

/// What one scrape read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scraped {
    /// The request counts the error-rate check reads; `None` when the counter is absent.
    pub counts: Option<Counts>,
    /// The API traffic for the traffic figures, when asked for; `None` when the counter is
    /// absent.
    pub traffic: Option<TrafficSample>,
}

/// Caps of one scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeLimits {
    /// Largest body read, in bytes (Prometheus: `body_size_limit`). A service's own metrics are
    /// tens of kilobytes; 4 MiB leaves room for large client libraries' defaults.
    pub max_body_bytes: usize,
    /// Most sample lines (series) in one exposition (Prometheus: `sample_limit`), counted over
    /// every metric, not only the one kept.
    pub max_series: usize,
    /// Longest single line; bounds the only buffer that grows with the input.
    pub max_line_bytes: usize,
}

impl Default for ScrapeLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_series: 20_000,
            max_line_bytes: 64 << 10,
        }
    }
}

/// Why a scrape gave no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The body was larger than `max_body_bytes`.
    BodyTooLarge,
    /// The exposition had more than `max_series` samples.
    TooManySeries,
    /// A line was longer than `max_line_bytes`.
    LineTooLong,
    /// A line was not valid Prometheus text (or not UTF-8).
    Malformed,
    /// The endpoint answered with a status other than 200.
    BadStatus,
    /// No complete answer within the probe timeout.
    Timeout,
    /// The connection failed or broke.
    Transport,
    /// Every scrape slot was taken (see the engine's `max_scrapes_in_flight`); skipped this round.
    Busy,
}

impl Rejected {
    /// The `reason` label of `flotilla_failover_scrape_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Rejected::BodyTooLarge => "body_too_large",
            Rejected::TooManySeries => "too_many_series",
            Rejected::LineTooLong => "line_too_long",
            Rejected::Malformed => "malformed",
            Rejected::BadStatus => "bad_status",
            Rejected::Timeout => "timeout",
            Rejected::Transport => "transport",
            Rejected::Busy => "busy",
        }
    }

    /// Every label value, for tests and dashboards.
    pub const ALL: [Rejected; 8] = [
        Rejected::BodyTooLarge,
        Rejected::TooManySeries,
        Rejected::LineTooLong,
        Rejected::Malformed,
        Rejected::BadStatus,
        Rejected::Timeout,
        Rejected::Transport,
        Rejected::Busy,
    ];
}

/// Streaming reader of one exposition: feed the body in chunks of any size, then `finish`.
#[derive(Debug)]
pub struct Scanner {
    limits: ScrapeLimits,
    partial: Vec<u8>,
    bytes: usize,
    series: usize,
    counts: Counts,
    found: bool,
    // Read `grpc_server_handled_total` (gRPC codes) instead of `http_requests_total`.
    grpc: bool,
    // Also read the API traffic and its latency histogram.
    traffic: Option<TrafficSample>,
    latency: Histogram,
    // More distinct bounds than `MAX_BUCKETS`: no latency from this scrape.
    too_many_buckets: bool,
}

impl Scanner {
    /// A scanner with empty state.
    pub fn new(limits: ScrapeLimits) -> Self {
        Self {
            limits,
            partial: Vec::new(),
            bytes: 0,
            series: 0,
            counts: Counts::default(),
            found: false,
            grpc: false,
            traffic: None,
            latency: Histogram::default(),
            too_many_buckets: false,
        }
    }

    /// Also reads the API traffic for the traffic figures: requests and failures outside the
    /// probe series, and the latency histogram of those requests.
    pub fn with_traffic(self) -> Self {
        Self {
            traffic: Some(TrafficSample::default()),
            ..self
        }
    }

    /// A scanner for a gRPC service: counts `grpc_server_handled_total` by failing gRPC code.
    pub fn grpc(limits: ScrapeLimits) -> Self {
        Self {
            grpc: true,
            ..Self::new(limits)
        }
    }

    /// Reads the next chunk of the body. After an error the scrape is over.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Rejected> {
        self.bytes = self.bytes.saturating_add(chunk.len());
        if self.bytes > self.limits.max_body_bytes {
            return Err(Rejected::BodyTooLarge);
        }
        while let Some(nl) = chunk.iter().position(|b| *b == b'\n') {
            let (head, rest) = chunk.split_at(nl);
            chunk = &rest[1..];
            if self.partial.is_empty() {
                self.line(head)?;
            } else {
                self.extend_partial(head)?;
                let line = std::mem::take(&mut self.partial);
                let r = self.line(&line);
                // Keep the allocation for the next split line.
                self.partial = line;
                self.partial.clear();
                r?;
            }
        }
        self.extend_partial(chunk)
    }

    /// Ends the body: reads a last line without a newline and returns what was read; the
    /// counts are `None` when the exposition has no request counter.
    pub fn finish(mut self) -> Result<Scraped, Rejected> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line)?;
        }
        let latency =
            (!self.latency.buckets().is_empty() && !self.too_many_buckets).then_some(self.latency);
        Ok(Scraped {
            counts: self.found.then_some(self.counts),
            traffic: self
                .traffic
                .filter(|_| self.found)
                .map(|t| TrafficSample { latency, ..t }),
        })
    }

    fn extend_partial(&mut self, bytes: &[u8]) -> Result<(), Rejected> {
        if self.partial.len() + bytes.len() > self.limits.max_line_bytes {
            return Err(Rejected::LineTooLong);
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn line(&mut self, raw: &[u8]) -> Result<(), Rejected> {
        if raw.len() > self.limits.max_line_bytes {
            return Err(Rejected::LineTooLong);
        }
        let text = std::str::from_utf8(raw).map_err(|_| Rejected::Malformed)?;
        let (metric, buckets) = if self.grpc {
            (GRPC_REQUESTS_METRIC, GRPC_DURATION_BUCKETS)
        } else {
            (REQUESTS_METRIC, DURATION_BUCKETS)
        };
        let latency = self.traffic.is_some();
        // Kept lines are read without allocating: their labels are classified as they come.
        let mut labels = SeriesLabels::default();
        let keep = |name: &str| name == metric || (latency && name == buckets);
        match promtext::visit_line(text, keep, |k, v| labels.see(k, v)) {
            Err(_) => Err(Rejected::Malformed),
            Ok(Visited::Blank) => Ok(()),
            Ok(Visited::Skipped) => self.count_series(),
            Ok(Visited::Kept { name, value }) => {
                self.count_series()?;
                if name == buckets {
                    self.add_bucket(&labels, value);
                } else {
                    self.add(&labels, value);
                }
                Ok(())
            }
        }
    }

    fn count_series(&mut self) -> Result<(), Rejected> {
        self.series += 1;
        if self.series > self.limits.max_series {
            return Err(Rejected::TooManySeries);
        }
        Ok(())
    }

    fn add_bucket(&mut self, labels: &SeriesLabels<'_>, value: f64) {
        if labels.probe {
            return;
        }
        let Some(le) = labels.le.and_then(bucket_bound) else {
            return;
        };
        let known = self.latency.buckets().iter().any(|(b, _)| *b == le);
        if known || self.latency.buckets().len() < MAX_BUCKETS {
            self.latency.add(le, value);
        } else {
            self.too_many_buckets = true;
        }
    }

    fn add(&mut self, labels: &SeriesLabels<'_>, value: f64) {
        let counts = if self.grpc {
            labels.grpc_counts(value)
        } else {
            labels.http_counts(value)
        };
        if let Some(c) = counts {
            self.found = true;
            self.counts.total += c.total;
            self.counts.errors += c.errors;
            self.counts.probes += c.probes;
            if let Some(t) = self.traffic.as_mut().filter(|_| !labels.probe) {
                t.requests += c.total;
                t.errors += c.errors;
            }
        }
    }
}

/// A bucket's upper bound from its `le` label (`+Inf` included).
fn bucket_bound(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        v => v.parse::<f64>().ok().filter(|b| !b.is_nan()),
    }
}

#[cfg(test)]
#[path = "scrape_tests.rs"]
mod tests;
