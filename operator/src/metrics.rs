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
}

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
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(notifications.clone()))?;
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
        let text = m.render();
        for name in [
            "flotilla_reconcile_total{result=\"success\"} 1",
            "flotilla_reconcile_failures_total{category=\"conflict\"} 1",
            "flotilla_child_writes_total{kind=\"Deployment\",outcome=\"created\"} 1",
            "flotilla_managed_objects{kind=\"MicroService\"} 3",
            "flotilla_reconcile_duration_seconds_count 1",
            "flotilla_leader 1",
            "flotilla_notifications_total{result=\"dropped\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        Ok(())
    }
}
