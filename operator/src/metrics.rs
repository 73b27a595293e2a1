//! Prometheus metrics of the reconciler. Every label value comes from a fixed set (results,
//! error categories, child kinds, outcomes): no object names, so series stay bounded however
//! many MicroServices there are.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The operator's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconcile runs by result (`success`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Reconcile failures by error category.
    pub failures: IntCounterVec,
    /// Child writes by kind and outcome.
    pub child_writes: IntCounterVec,
    /// Objects in the reconciler's caches, by kind.
    pub managed_objects: IntGaugeVec,
    /// 1 while this replica holds the leader lease (or runs without leader election).
    pub leader: IntGauge,
    /// Webhook notifications by result (`sent`, `failed`, `dropped`), see [`crate::notify`].
    pub notifications: IntCounterVec,
    /// Events published by reason: the five of `event_reasons` (what alerts key on), all others
    /// as `other`; see [`event_reason_label`].
    pub events: IntCounterVec,
}

/// The `reason` label of `flotilla_events_total`: a reason of
/// [`flotilla_crds::event_reasons`], or `other`, so the label set stays fixed.
pub fn event_reason_label(reason: &str) -> &'static str {
    use flotilla_crds::event_reasons::{FAILED_BACK, FAILED_OVER, FLAPPING, PROMOTED, ROLLED_BACK};
    match reason {
        FAILED_OVER => FAILED_OVER,
        FAILED_BACK => FAILED_BACK,
        FLAPPING => FLAPPING,
        PROMOTED => PROMOTED,
        ROLLED_BACK => ROLLED_BACK,
        _ => "other",
    }
}

/// Every value of `flotilla_events_total{reason}`.
const EVENT_REASON_LABELS: [&str; 6] = [
    flotilla_crds::event_reasons::FAILED_OVER,
    flotilla_crds::event_reasons::FAILED_BACK,
    flotilla_crds::event_reasons::FLAPPING,
    flotilla_crds::event_reasons::PROMOTED,
    flotilla_crds::event_reasons::ROLLED_BACK,
    "other",
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("flotilla_reconcile_total", "Reconcile runs by result"),
            &["result"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "flotilla_reconcile_duration_seconds",
                "Duration of a reconcile run",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "flotilla_reconcile_failures_total",
                "Reconcile failures by error category",
            ),
            &["category"],
        )?;
        let child_writes = IntCounterVec::new(
            Opts::new(
                "flotilla_child_writes_total",
                "Writes to child objects by kind and outcome",
            ),
            &["kind", "outcome"],
        )?;
        let managed_objects = IntGaugeVec::new(
            Opts::new(
                "flotilla_managed_objects",
                "Objects in the reconciler's caches by kind",
            ),
            &["kind"],
        )?;
        let leader = IntGauge::new(
            "flotilla_leader",
            "1 while this replica is the leader (or leader election is off)",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(child_writes.clone()))?;
        registry.register(Box::new(managed_objects.clone()))?;
        let notifications = IntCounterVec::new(
            Opts::new(
                "flotilla_notifications_total",
                "Webhook notifications of Events by result: sent, failed (after retries), dropped (queue full)",
            ),
            &["result"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "flotilla_events_total",
                "Events published, by reason (FailedOver, FailedBack, Flapping, Promoted, RolledBack, other)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(notifications.clone()))?;
        registry.register(Box::new(events.clone()))?;
        // Series that alerts compute `increase` on exist from the start at 0: a series first
        // scraped at 1 shows no increase, so the first failure or failover would go unseen.
        for result in ["success", "error"] {
            reconciles.with_label_values(&[result]);
        }
        for reason in EVENT_REASON_LABELS {
            events.with_label_values(&[reason]);
        }
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            reconciles,
            reconcile_duration,
            failures,
            child_writes,
            managed_objects,
            leader,
            notifications,
            events,
        })
    }

    /// The registry, for other components (the failover engine) to register their metrics in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Text exposition of all metrics.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition contains every metric family once something was recorded.
    #[test]
    fn renders_families() -> Result<(), prometheus::Error> {
        let m = Metrics::new()?;
        m.reconciles.with_label_values(&["success"]).inc();
        m.failures.with_label_values(&["conflict"]).inc();
        m.child_writes
            .with_label_values(&["Deployment", "created"])
            .inc();
        m.managed_objects
            .with_label_values(&["MicroService"])
            .set(3);
        m.reconcile_duration.observe(0.01);
        m.leader.set(1);
        m.notifications.with_label_values(&["dropped"]).inc();
        m.events
            .with_label_values(&[event_reason_label("FailedOver")])
            .inc();
        let text = m.render();
        for name in [
            "flotilla_reconcile_total{result=\"success\"} 1",
            "flotilla_reconcile_failures_total{category=\"conflict\"} 1",
            "flotilla_child_writes_total{kind=\"Deployment\",outcome=\"created\"} 1",
            "flotilla_managed_objects{kind=\"MicroService\"} 3",
            "flotilla_reconcile_duration_seconds_count 1",
            "flotilla_leader 1",
            "flotilla_notifications_total{result=\"dropped\"} 1",
            "flotilla_events_total{reason=\"FailedOver\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        Ok(())
    }

    /// The series alerts take `increase` of are exported at 0 before anything happened, so the
    /// first error or Event of a reason counts as an increase.
    #[test]
    fn alerted_series_start_at_zero() -> Result<(), prometheus::Error> {
        let text = Metrics::new()?.render();
        for line in [
            "flotilla_reconcile_total{result=\"error\"} 0",
            "flotilla_reconcile_total{result=\"success\"} 0",
            "flotilla_events_total{reason=\"FailedOver\"} 0",
            "flotilla_events_total{reason=\"Flapping\"} 0",
            "flotilla_events_total{reason=\"RolledBack\"} 0",
            "flotilla_events_total{reason=\"other\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        Ok(())
    }

    /// Only the reasons alerts key on get their own label value; any other reason is `other`.
    #[test]
    fn event_reasons_map_to_a_fixed_set() {
        assert_eq!(event_reason_label("RolledBack"), "RolledBack");
        assert_eq!(event_reason_label("Flapping"), "Flapping");
        assert_eq!(event_reason_label("PodEjected"), "other");
        assert_eq!(event_reason_label("rolledback"), "other");
        for label in EVENT_REASON_LABELS {
            let mapped = if label == "other" { "x" } else { label };
            assert_eq!(event_reason_label(mapped), label);
        }
    }
}
