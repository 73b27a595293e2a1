//! Request figures for `status.traffic`: what one scrape of a pod reads ([`TrafficSample`]),
//! each pod's recent history of scrapes ([`TrafficWindow`]) and its rates over the window,
//! the figures of a group of pods ([`figures`]: requests per second, error ratio, p99 latency, as
//! `sum(rate(...))` and `histogram_quantile(0.99, sum by (le) (rate(...)))` would give them), and
//! when a new set of figures is worth a status write ([`Publisher`]).
//!
//! Pure: samples and times in, values out; the engine owns the state and the writer writes.
//! No data is never a figure of 0: a group without scraped pods has no figures, one without
//! requests no error ratio, one without a histogram or enough requests no p99.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use flotilla_crds::{TrafficFigures, TrafficStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::histogram::Histogram;

/// Fewest requests in a group's window for its p99 latency to be given: the 99th percentile
/// of fewer requests is little more than the slowest one.
pub const MIN_P99_REQUESTS: f64 = 100.0;

/// What one scrape of a pod says about its API traffic: cumulative API requests and failed
/// ones (probe, health and metrics series excluded, see `error_rate::is_probe_series`), and the
/// cumulative latency histogram of the same requests when the pod exports one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficSample {
    /// API requests answered since the process started.
    pub requests: f64,
    /// Those that failed (HTTP 5xx, failing gRPC codes).
    pub errors: f64,
    /// Their latency histogram, in seconds.
    pub latency: Option<Histogram>,
}

/// A pod's API traffic over its window.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRates {
    /// Seconds between the scrapes the rates come from.
    pub seconds: f64,
    /// API requests in between.
    pub requests: f64,
    /// Failed ones.
    pub errors: f64,
    /// Their latency histogram, when the pod exports one.
    pub latency: Option<Histogram>,
}

/// A pod's recent scrapes. Scrapes closer together than a sixth of the window are thinned to
/// the newest, so a pod scraped every second keeps eight samples, not thirty.
#[derive(Debug, Clone)]
pub struct TrafficWindow {
    window: Duration,
    snaps: VecDeque<(Instant, TrafficSample)>,
}

impl TrafficWindow {
    /// An empty history over `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            snaps: VecDeque::new(),
        }
    }

    /// Records a scrape: `None` when the pod exports no request counter (the history goes).
    pub fn record(&mut self, at: Instant, sample: Option<TrafficSample>) {
        let Some(now) = sample else {
            self.snaps.clear();
            return;
        };
        if let Some((_, last)) = self.snaps.back() {
            let reset = now.requests < last.requests
                || now.errors < last.errors
                || match (&now.latency, &last.latency) {
                    (Some(a), Some(b)) => !a.follows(b),
                    _ => false,
                };
            if reset {
                // The process restarted and its counters began again.
                self.snaps.clear();
            }
        }
        let spacing = self.window / 6;
        let len = self.snaps.len();
        if len >= 2 && at.saturating_duration_since(self.snaps[len - 2].0) < spacing {
            self.snaps.pop_back();
        }
        self.snaps.push_back((at, now));
        // Keep the newest sample at or before the window's start as the baseline.
        if let Some(start) = at.checked_sub(self.window) {
            while self.snaps.get(1).is_some_and(|(t, _)| *t <= start) {
                self.snaps.pop_front();
            }
        }
    }

    /// The pod's traffic between its baseline and its newest scrape; `None` with fewer than two
    /// scrapes, or when the newest is older than the window (the pod is no longer scraped).
    pub fn rates(&self, now: Instant) -> Option<PodRates> {
        let (t1, last) = self.snaps.back()?;
        let (t0, base) = self.snaps.front()?;
        if now.saturating_duration_since(*t1) > self.window {
            return None;
        }
        let seconds = t1.saturating_duration_since(*t0).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        let latency = match (&last.latency, &base.latency) {
            (Some(a), Some(b)) => a.since(b),
            _ => None,
        };
        Some(PodRates {
            seconds,
            requests: last.requests - base.requests,
            errors: (last.errors - base.errors).clamp(0.0, last.requests - base.requests),
            latency,
        })
    }
}

/// The figures of a group of pods, unrounded.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Requests per second, summed over the pods.
    pub requests_per_second: f64,
    /// Failed share of the requests; `None` without requests.
    pub error_ratio: Option<f64>,
    /// 99th percentile latency in seconds; `None` without histograms or enough requests.
    pub p99_seconds: Option<f64>,
    /// Pods counted.
    pub pods: usize,
}

/// The figures of the pods whose rates are given; `None` when there are none.
pub fn figures<'a>(pods: impl IntoIterator<Item = &'a PodRates>) -> Option<Figures> {
    let pods: Vec<&PodRates> = pods.into_iter().collect();
    if pods.is_empty() {
        return None;
    }
    let requests: f64 = pods.iter().map(|p| p.requests).sum();
    let errors: f64 = pods.iter().map(|p| p.errors).sum();
    let latency = Histogram::sum(pods.iter().filter_map(|p| p.latency.as_ref()));
    let p99_seconds = latency
        .filter(|h| h.count().is_some_and(|n| n >= MIN_P99_REQUESTS))
        .and_then(|h| h.quantile(0.99));
    Some(Figures {
        requests_per_second: pods.iter().map(|p| p.requests / p.seconds).sum(),
        error_ratio: (requests > 0.0).then(|| (errors / requests).clamp(0.0, 1.0)),
        p99_seconds,
        pods: pods.len(),
    })
}

/// `x` to three significant digits.
fn significant(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 2 - x.abs().log10().floor() as i32;
    if digits >= 0 {
        let f = 10f64.powi(digits);
        (x * f).round() / f
    } else {
        let f = 10f64.powi(-digits);
        (x / f).round() * f
    }
}

fn rounded(f: &Figures) -> TrafficFigures {
    TrafficFigures {
        requests_per_second: Some(significant(f.requests_per_second)),
        error_ratio: f.error_ratio.map(|r| (r * 1000.0).round() / 1000.0),
        p99_latency_millis: f.p99_seconds.map(|s| significant(s * 1000.0)),
        pods: Some(i32::try_from(f.pods).unwrap_or(i32::MAX)),
    }
}

/// The `status.traffic` value for the figures of all pods, and of the canary and stable pods
/// apart while a canary runs, rounded for display (three significant digits; the error ratio
/// to three decimals). `None` when no pod has figures.
pub fn status(
    all: Option<&Figures>,
    canary: Option<&Figures>,
    stable: Option<&Figures>,
    window: Duration,
    observed_at: Time,
) -> Option<TrafficStatus> {
    let all = rounded(all?);
    Some(TrafficStatus {
        requests_per_second: all.requests_per_second,
        error_ratio: all.error_ratio,
        p99_latency_millis: all.p99_latency_millis,
        pods: all.pods,
        window_seconds: Some(i32::try_from(window.as_secs()).unwrap_or(i32::MAX)),
        observed_at: Some(observed_at),
        canary: canary.map(rounded),
        stable: canary.and(stable).map(rounded),
    })
}

/// How often figures may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishPolicy {
    /// Least time between two writes of a service's figures.
    pub interval: Duration,
    /// The same while a guarded rollout analyses the service's canary (the analysis compares
    /// the canary's latency with the stable pods').
    pub analysis_interval: Duration,
    /// Figures that did not move are written again after this long, so `observedAt` stays
    /// recent.
    pub refresh: Duration,
}

impl Default for PublishPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            analysis_interval: Duration::from_secs(2),
            refresh: Duration::from_secs(300),
        }
    }
}

/// Moved by more than a tenth of its value (any change from or to nothing counts).
fn moved_relative(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() > 0.1 * a.abs().max(b.abs()),
        (None, None) => false,
        _ => true,
    }
}

fn moved_figures(a: &TrafficFigures, b: &TrafficFigures) -> bool {
    let ratio = match (a.error_ratio, b.error_ratio) {
        (Some(a), Some(b)) => (a - b).abs() > 0.01,
        (None, None) => false,
        _ => true,
    };
    a.pods != b.pods
        || ratio
        || moved_relative(a.requests_per_second, b.requests_per_second)
        || moved_relative(a.p99_latency_millis, b.p99_latency_millis)
}

fn top(t: &TrafficStatus) -> TrafficFigures {
    TrafficFigures {
        requests_per_second: t.requests_per_second,
        error_ratio: t.error_ratio,
        p99_latency_millis: t.p99_latency_millis,
        pods: t.pods,
    }
}

/// Whether `b` says something `a` did not: a figure or group appeared or went, a pod count
/// changed, the error ratio moved by more than 0.01, or another figure by more than a tenth.
pub fn moved(a: &TrafficStatus, b: &TrafficStatus) -> bool {
    let group = |x: &Option<TrafficFigures>, y: &Option<TrafficFigures>| match (x, y) {
        (Some(x), Some(y)) => moved_figures(x, y),
        (None, None) => false,
        _ => true,
    };
    a.window_seconds != b.window_seconds
        || moved_figures(&top(a), &top(b))
        || group(&a.canary, &b.canary)
        || group(&a.stable, &b.stable)
}

/// The figures last published for one service, and when.
#[derive(Debug, Clone, Default)]
pub struct Publisher {
    published: Option<TrafficStatus>,
    at: Option<Instant>,
}

impl Publisher {
    /// Takes over what the service's status shows (a restarted operator, a new leader), as if
    /// published `now`: it is replaced after the interval, not at once.
    pub fn resume(current: Option<TrafficStatus>, now: Instant) -> Self {
        Self {
            at: current.as_ref().map(|_| now),
            published: current,
        }
    }

    /// The figures to show.
    pub fn current(&self) -> Option<&TrafficStatus> {
        self.published.as_ref()
    }

    /// Offers newly computed figures; they replace the published ones when [`due`] says so.
    /// Returns whether they did.
    pub fn offer(
        &mut self,
        next: Option<TrafficStatus>,
        now: Instant,
        analysing: bool,
        policy: &PublishPolicy,
    ) -> bool {
        if !due(
            self.published.as_ref(),
            self.at,
            next.as_ref(),
            now,
            analysing,
            policy,
        ) {
            return false;
        }
        self.published = next;
        self.at = Some(now);
        true
    }
}

/// Whether figures `next` should replace `prev`, published at `prev_at`. A canary group that
/// appears or goes (an analysis starts or ends) is published at once; otherwise at most once
/// per interval, and then only when the figures appeared, went, moved (see [`moved`]) or were
/// last published `refresh` ago.
pub fn due(
    prev: Option<&TrafficStatus>,
    prev_at: Option<Instant>,
    next: Option<&TrafficStatus>,
    now: Instant,
    analysing: bool,
    policy: &PublishPolicy,
) -> bool {
    let canary = |t: Option<&TrafficStatus>| t.is_some_and(|t| t.canary.is_some());
    if canary(prev) != canary(next) {
        return true;
    }
    let interval = if analysing {
        policy.analysis_interval
    } else {
        policy.interval
    };
    let age = prev_at.map(|t| now.saturating_duration_since(t));
    if age.is_some_and(|a| a < interval) {
        return false;
    }
    match (prev, next) {
        (None, None) => false,
        (Some(a), Some(b)) => moved(a, b) || age.is_none_or(|a| a >= policy.refresh),
        _ => true,
    }
}

#[cfg(test)]
#[path = "traffic_tests.rs"]
mod tests;
