//! Per-pod health state machine: probe observations in, a healthy/unhealthy verdict out.
//!
//! A pod starts healthy when the kubelet says it is Ready (so a new or restarted operator does not
//! eject pods it has not probed yet) and unhealthy otherwise. Consecutive failures and successes
//! move it across the thresholds. Pure: time is passed in, no I/O.

use std::time::{Duration, Instant};

/// The result of one probe of one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The readiness endpoint answered 2xx/3xx in time, and the error ratio (if scraped) is fine.
    Success,
    /// The readiness endpoint answered with this non-success status.
    BadStatus(u16),
    /// The gRPC health check answered, but not `SERVING`: the reported status (`NOT_SERVING`,
    /// `SERVICE_UNKNOWN`) or the failing call's code name (`NotFound`, `Unimplemented`, ...).
    GrpcNotServing(&'static str),
    /// No answer within the probe timeout.
    Timeout,
    /// The connection could not be made or broke.
    ConnectError,
    /// Readiness was fine but the 5xx ratio over the window exceeded the limit.
    ErrorRate(f64),
}

impl Observation {
    /// Whether the observation counts towards the success threshold.
    pub fn is_success(&self) -> bool {
        matches!(self, Observation::Success)
    }

    /// A fixed label for metrics and status evidence.
    pub fn label(&self) -> &'static str {
        match self {
            Observation::Success => "success",
            Observation::BadStatus(_) | Observation::GrpcNotServing(_) => "bad_status",
            Observation::Timeout => "timeout",
            Observation::ConnectError => "connect_error",
            Observation::ErrorRate(_) => "error_rate",
        }
    }
}

/// Thresholds that move a pod between verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive failures that make a healthy pod unhealthy (at least 1).
    pub failure: u32,
    /// Consecutive successes that make an unhealthy pod healthy (at least 1).
    pub success: u32,
}

/// What the engine knows about one pod's health.
#[derive(Debug, Clone, PartialEq)]
pub struct PodHealth {
    /// The current verdict.
    pub healthy: bool,
    /// Failures in a row, reset by a success.
    pub consecutive_failures: u32,
    /// Successes in a row, reset by a failure.
    pub consecutive_successes: u32,
    /// The last probe result, if any probe ran yet.
    pub last: Option<Observation>,
    /// When the last probe finished.
    pub last_probe_at: Option<Instant>,
    /// The latest 5xx ratio over the window, when metrics are scraped and there was traffic.
    pub error_ratio: Option<f64>,
    /// When the first failure of the current failure run happened: the start of detection.
    pub failing_since: Option<Instant>,
    /// When the verdict last changed to unhealthy, with the start of the failure run that caused it.
    pub unhealthy_detected_from: Option<Instant>,
}

impl PodHealth {
    /// A pod seen for the first time: healthy exactly when the kubelet says it is Ready.
    pub fn new(kubelet_ready: bool) -> Self {
        Self {
            healthy: kubelet_ready,
            consecutive_failures: 0,
            consecutive_successes: 0,
            last: None,
            last_probe_at: None,
            error_ratio: None,
            failing_since: None,
            unhealthy_detected_from: None,
        }
    }

    /// Feeds one probe result in; returns `true` when the verdict changed.
    pub fn observe(&mut self, obs: Observation, at: Instant, th: Thresholds) -> bool {
        let before = self.healthy;
        if obs.is_success() {
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            self.consecutive_failures = 0;
            self.failing_since = None;
            if !self.healthy && self.consecutive_successes >= th.success.max(1) {
                self.healthy = true;
                self.unhealthy_detected_from = None;
            }
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.consecutive_successes = 0;
            let since = *self.failing_since.get_or_insert(at);
            if self.healthy && self.consecutive_failures >= th.failure.max(1) {
                self.healthy = false;
                self.unhealthy_detected_from = Some(since);
            }
        }
        if let Observation::ErrorRate(r) = obs {
            self.error_ratio = Some(r);
        }
        self.last = Some(obs);
        self.last_probe_at = Some(at);
        before != self.healthy
    }

    /// The kubelet now reports the pod Ready. A pod that started unhealthy only because the
    /// kubelet had not called it Ready yet, and has not failed a probe since, becomes healthy, so
    /// new pods are not ejected while probing catches up.
    pub fn kubelet_became_ready(&mut self) -> bool {
        if !self.healthy && self.consecutive_failures == 0 && self.unhealthy_detected_from.is_none()
        {
            self.healthy = true;
            return true;
        }
        false
    }

    /// Records the latest error ratio (or its absence) without counting it as a probe.
    pub fn set_error_ratio(&mut self, ratio: Option<f64>) {
        self.error_ratio = ratio;
    }

    /// How long ago the last probe ran, if any.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.last_probe_at.map(|t| now.saturating_duration_since(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TH: Thresholds = Thresholds {
        failure: 2,
        success: 2,
    };

    #[test]
    fn starts_from_kubelet_readiness() {
        // A pod the engine has not probed yet keeps the kubelet's verdict.
        assert!(PodHealth::new(true).healthy);
        assert!(!PodHealth::new(false).healthy);
    }

    #[test]
    fn failure_threshold_ejects_and_records_detection_start() {
        // Only `failure` consecutive failures flip a healthy pod, and detection starts at the first.
        let t0 = Instant::now();
        let mut p = PodHealth::new(true);
        assert!(!p.observe(Observation::Timeout, t0, TH));
        assert!(p.healthy);
        let t1 = t0 + Duration::from_millis(500);
        assert!(p.observe(Observation::BadStatus(503), t1, TH));
        assert!(!p.healthy);
        assert_eq!(p.unhealthy_detected_from, Some(t0));
        assert_eq!(p.consecutive_failures, 2);
    }

    #[test]
    fn a_new_pod_turning_ready_is_not_ejected_while_probing_catches_up() {
        // Kubelet readiness lifts the initial verdict, but never a verdict earned by failures.
        let t0 = Instant::now();
        let mut p = PodHealth::new(false);
        p.observe(Observation::Success, t0, TH);
        assert!(p.kubelet_became_ready());
        assert!(p.healthy);
        let mut q = PodHealth::new(true);
        q.observe(Observation::Timeout, t0, TH);
        q.observe(Observation::Timeout, t0, TH);
        assert!(!q.kubelet_became_ready());
        assert!(!q.healthy);
    }

    #[test]
    fn success_threshold_returns() {
        // An unhealthy pod needs `success` consecutive successes to return.
        let t0 = Instant::now();
        let mut p = PodHealth::new(false);
        assert!(!p.observe(Observation::Success, t0, TH));
        assert!(!p.observe(Observation::ConnectError, t0, TH));
        assert!(!p.observe(Observation::Success, t0, TH));
        assert!(p.observe(Observation::Success, t0, TH));
        assert!(p.healthy);
        assert_eq!(p.unhealthy_detected_from, None);
    }

    #[test]
    fn alternating_results_never_flip() {
        // A noisy pod that fails every other probe stays healthy with thresholds of 2.
        let t0 = Instant::now();
        let mut p = PodHealth::new(true);
        for i in 0..20 {
            let obs = if i % 2 == 0 {
                Observation::Timeout
            } else {
                Observation::Success
            };
            assert!(!p.observe(obs, t0 + Duration::from_millis(500 * i), TH));
        }
        assert!(p.healthy);
    }

    #[test]
    fn error_rate_counts_as_failure_and_is_kept_as_evidence() {
        // A high 5xx ratio is a failing observation and its value is kept.
        let t0 = Instant::now();
        let mut p = PodHealth::new(true);
        p.observe(Observation::ErrorRate(0.4), t0, TH);
        p.observe(Observation::ErrorRate(0.5), t0, TH);
        assert!(!p.healthy);
        assert_eq!(p.error_ratio, Some(0.5));
        assert_eq!(p.last.as_ref().map(Observation::label), Some("error_rate"));
    }
}
