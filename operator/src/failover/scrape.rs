//! Bounded reading of a pod's Prometheus metrics: the body is parsed as it streams in, only the
//! request counter the error-rate check reads is kept (summed as it goes), and every scrape is
//! capped in bytes, in series and in line length, like Prometheus's own `body_size_limit` and
//! `sample_limit`. A scrape over a cap gives no data for that round (counted by reason), never a
//! failure verdict: a pod is judged by its readiness, not by how verbose its metrics are.
//!
//! Memory per scrape is one partial line (at most `max_line_bytes`) plus the HTTP read buffer,
//! whatever the body size. Pure: bytes in, counts or a rejection out; the HTTP side is in
//! `probe.rs`.

use super::error_rate::{Counts, GRPC_REQUESTS_METRIC, REQUESTS_METRIC};
use super::promtext::{self, Line, Sample};

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

    /// Ends the body: reads a last line without a newline and returns the request counts, or
    /// `None` when the exposition has no `http_requests_total`.
    pub fn finish(mut self) -> Result<Option<Counts>, Rejected> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line)?;
        }
        Ok(self.found.then_some(self.counts))
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
        let metric = if self.grpc {
            GRPC_REQUESTS_METRIC
        } else {
            REQUESTS_METRIC
        };
        match promtext::read_line(text, |name| name == metric) {
            Err(_) => Err(Rejected::Malformed),
            Ok(Line::Blank) => Ok(()),
            Ok(Line::Skipped) => self.count_series(),
            Ok(Line::Kept(s)) => {
                self.count_series()?;
                self.add(&s);
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

    fn add(&mut self, s: &Sample) {
        let counts = if self.grpc {
            super::error_rate::grpc_sample_counts(s)
        } else {
            super::error_rate::sample_counts(s)
        };
        if let Some(c) = counts {
            self.found = true;
            self.counts.total += c.total;
            self.counts.errors += c.errors;
            self.counts.probes += c.probes;
        }
    }
}

#[cfg(test)]
#[path = "scrape_tests.rs"]
mod tests;
