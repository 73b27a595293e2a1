//! Prometheus metrics of the failover engine (prefix `flotilla_`).
//!
//! Labels are fixed `&'static str` values except on `flotilla_failover_healthy_endpoints`, which
//! carries the MicroService namespace and name: it has one series per failover-enabled service,
//! a number the cluster admin chooses and that is small next to pod counts, and the series is
//! removed when the service stops using failover.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus::{
    exponential_buckets, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The engine's metric handles; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Probes by result (`success`, `bad_status`, `timeout`, `connect_error`, `error_rate`).
    pub probes: IntCounterVec,
    /// Readiness request latency.
    pub probe_duration: Histogram,
    /// Pods that currently receive (or in Observe mode would receive) each service's traffic.
    pub healthy_endpoints: IntGaugeVec,
    /// Traffic moved to a fallback.
    pub failovers: IntCounter,
    /// Traffic returned to a primary.
    pub failbacks: IntCounter,
    /// From the first failed probe of the decisive run to the traffic change being written,
    /// by change (`eject`, `failover`).
    pub detection: HistogramVec,
    /// API writes by kind (`label`, `status`, `event`) and result (`ok`, `error`, `timeout`,
    /// `not_leading`).
    pub writes: IntCounterVec,
    /// Metrics scrapes that gave no data, by reason (`body_too_large`, `too_many_series`,
    /// `line_too_long`, `malformed`, `bad_status`, `timeout`, `transport`, `busy`).
    pub scrape_rejected: IntCounterVec,
    /// Wall-clock times of the last failover's steps (`first_failure`: the first failed probe
    /// of the decisive run; `decided`; `written`: membership writes acknowledged), so where the
    /// time of a failover went can be read after the fact.
    pub last_failover: GaugeVec,
    /// Ejected pods that still receive requests (sticky connections), over all services; no
    /// per-object labels: the pods are named in status and Events.
    pub sticky_pods: IntGauge,
    /// Deletions of sticky pods (`stickyConnections: Restart`) by result (`ok`, `error`,
    /// `timeout`, `not_leading`).
    pub sticky_restarts: IntCounterVec,
    /// Readiness watches open on pods that accepted one.
    pub readiness_watches: IntGauge,
    /// What readiness watches reported, by report (`ready`, `not_ready`, `silent`,
    /// `connection_lost`, `reconnect_failed`, `open_failed`, `unsupported`, and `error_rate`:
    /// the request counts on a pod's lines failed it).
    pub watch_reports: IntCounterVec,
}

impl Metrics {
    /// Creates unregistered metrics.
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            probes: IntCounterVec::new(
                Opts::new("flotilla_probes_total", "Pod probes by result."),
                &["result"],
            )?,
            probe_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "flotilla_probe_duration_seconds",
                    "Latency of pod readiness probes.",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 12)?),
            )?,
            healthy_endpoints: IntGaugeVec::new(
                Opts::new(
                    "flotilla_failover_healthy_endpoints",
                    "Pods serving each failover-enabled service's traffic.",
                ),
                &["namespace", "name"],
            )?,
            failovers: IntCounter::new(
                "flotilla_failovers_total",
                "Times traffic moved to a fallback service.",
            )?,
            failbacks: IntCounter::new(
                "flotilla_failbacks_total",
                "Times traffic returned to a primary service.",
            )?,
            detection: HistogramVec::new(
                HistogramOpts::new(
                    "flotilla_failover_detection_seconds",
                    "From the first failed probe of the decisive run to the traffic change written.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0,
                    10.0, 30.0,
                ]),
                &["change"],
            )?,
            writes: IntCounterVec::new(
                Opts::new(
                    "flotilla_failover_writes_total",
                    "API writes of the failover engine by kind and result.",
                ),
                &["kind", "result"],
            )?,
            scrape_rejected: IntCounterVec::new(
                Opts::new(
                    "flotilla_failover_scrape_rejected_total",
                    "Pod metrics scrapes that gave no data for their round, by reason; never a \
                     failure verdict.",
                ),
                &["reason"],
            )?,
            last_failover: GaugeVec::new(
                Opts::new(
                    "flotilla_failover_last_failover_timestamp_seconds",
                    "Unix time of each step of the last failover: first failed probe, decision, \
                     membership writes acknowledged.",
                ),
                &["step"],
            )?,
            sticky_pods: IntGauge::new(
                "flotilla_failover_sticky_pods",
                "Pods out of traffic whose request counters keep rising: clients still reach \
                 them over connections opened before they were ejected.",
            )?,
            sticky_restarts: IntCounterVec::new(
                Opts::new(
                    "flotilla_failover_sticky_restarts_total",
                    "Failing sticky pods evicted so their connections break (stickyConnections: \
                     Restart), by result (disruption_budget: a PodDisruptionBudget refused).",
                ),
                &["result"],
            )?,
            readiness_watches: IntGauge::new(
                "flotilla_readiness_watches",
                "Pods with a readiness watch open, reporting their readiness changes as they \
                 happen.",
            )?,
            watch_reports: IntCounterVec::new(
                Opts::new(
                    "flotilla_readiness_watch_reports_total",
                    "Reports of readiness watches: a pod's own ready/not_ready, a late \
                     heartbeat (the pod probed at once), a silent pod (missed heartbeats), a \
                     watch connection lost, its immediate reconnect failed, a watch that could \
                     not open, a pod without support, or a pod failed by the error rate of the \
                     request counts on its lines.",
                ),
                &["report"],
            )?,
        })
    }

    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.probes.clone()))?;
        registry.register(Box::new(self.probe_duration.clone()))?;
        registry.register(Box::new(self.healthy_endpoints.clone()))?;
        registry.register(Box::new(self.failovers.clone()))?;
        registry.register(Box::new(self.failbacks.clone()))?;
        registry.register(Box::new(self.detection.clone()))?;
        registry.register(Box::new(self.writes.clone()))?;
        registry.register(Box::new(self.scrape_rejected.clone()))?;
        registry.register(Box::new(self.last_failover.clone()))?;
        registry.register(Box::new(self.sticky_pods.clone()))?;
        registry.register(Box::new(self.sticky_restarts.clone()))?;
        registry.register(Box::new(self.readiness_watches.clone()))?;
        registry.register(Box::new(self.watch_reports.clone()))?;
        Ok(())
    }
}

impl Metrics {
    /// Records the steps of a failover as wall-clock times.
    pub fn record_failover_timeline(
        &self,
        first_failure: Instant,
        decided: Instant,
        written: Instant,
    ) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        for (step, t) in [
            ("first_failure", first_failure),
            ("decided", decided),
            ("written", written),
        ] {
            let at = wall
                .checked_sub(now.saturating_duration_since(t))
                .and_then(|w| w.duration_since(UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_failover.with_label_values(&[step]).set(at);
        }
    }
}

/// The series of `flotilla_probes_total`, resolved once so counting a probe costs no label
/// hashing or map lookup (it runs a few thousand times a second at 1,000 pods).
#[derive(Clone, Debug)]
pub struct ProbeResults {
    success: IntCounter,
    bad_status: IntCounter,
    timeout: IntCounter,
    connect_error: IntCounter,
    error_rate: IntCounter,
    skipped: IntCounter,
}

impl ProbeResults {
    /// Resolves the series of `probes`.
    pub fn new(probes: &IntCounterVec) -> Self {
        let c = |r: &str| probes.with_label_values(&[r]);
        Self {
            success: c("success"),
            bad_status: c("bad_status"),
            timeout: c("timeout"),
            connect_error: c("connect_error"),
            error_rate: c("error_rate"),
            skipped: c("skipped"),
        }
    }

    /// The series of a result label (`Observation::label` or `skipped`); an unknown label
    /// counts as `bad_status`.
    pub fn get(&self, result: &str) -> &IntCounter {
        match result {
            "success" => &self.success,
            "timeout" => &self.timeout,
            "connect_error" => &self.connect_error,
            "error_rate" => &self.error_rate,
            "skipped" => &self.skipped,
            _ => &self.bad_status,
        }
    }
}

/// Creates the metrics and registers them in `registry`.
pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
    let m = Metrics::new()?;
    m.register(registry)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_once_and_exposes_names() {
        // All metrics land in the registry under the documented names.
        let r = Registry::new();
        let m = register(&r).expect("register");
        m.probes.with_label_values(&["success"]).inc();
        m.detection.with_label_values(&["failover"]).observe(0.8);
        let names: Vec<_> = r.gather().iter().map(|f| f.name().to_owned()).collect();
        assert!(names.contains(&"flotilla_probes_total".to_owned()));
        assert!(names.contains(&"flotilla_failover_detection_seconds".to_owned()));
        assert!(m.register(&r).is_err(), "a second registration is refused");
    }
}
