//! The relay's metrics, in the service's registry beside the gRPC ones. Registered only when
//! events are on, so their absence on `/metrics` also says that events are off.
//!
//! The failure `reason` label comes from [`Failure::label`], a fixed set.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Why a publish did not end in a confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The broker refused the message (`basic.nack`).
    Nack,
    /// No connection: the broker is unreachable, refused us or went away.
    Connection,
    /// The connection is up but the channel failed or was closed.
    Channel,
    /// No confirm arrived in time.
    Timeout,
}

impl Failure {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Nack => "nack",
            Self::Connection => "connection",
            Self::Channel => "channel",
            Self::Timeout => "timeout",
        }
    }
}

/// Buckets of the commit-to-confirm delay: milliseconds when the broker is up, up to a quarter
/// of an hour when events waited out an outage.
const DELAY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// Counters, the pending gauge and the delay histogram of the relay.
#[derive(Clone)]
pub struct EventMetrics {
    published: IntCounter,
    failures: IntCounterVec,
    pending: IntGauge,
    delay: Histogram,
}

impl std::fmt::Debug for EventMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventMetrics").finish_non_exhaustive()
    }
}

impl EventMetrics {
    /// Creates the series and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let published = IntCounter::new(
            "orders_events_published_total",
            "Events the broker confirmed.",
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "orders_event_publish_failures_total",
                "Publishes (and connection attempts) that did not end in a confirm, by reason.",
            ),
            &["reason"],
        )?;
        let pending = IntGauge::new(
            "orders_outbox_pending",
            "Events in the outbox the broker has not confirmed yet.",
        )?;
        let delay = Histogram::with_opts(
            HistogramOpts::new(
                "orders_event_publish_seconds",
                "Time from an order's commit to the broker's confirm of its event.",
            )
            .buckets(DELAY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(delay.clone()))?;
        // Every reason is shown from the start, at 0, so a rate over it is never "no data".
        for reason in [
            Failure::Nack,
            Failure::Connection,
            Failure::Channel,
            Failure::Timeout,
        ] {
            failures.with_label_values(&[reason.label()]);
        }
        Ok(Self {
            published,
            failures,
            pending,
            delay,
        })
    }

    /// One event confirmed, `delay` after its commit.
    pub fn published(&self, delay: Duration) {
        self.published.inc();
        self.delay.observe(delay.as_secs_f64());
        self.pending.dec();
    }

    /// One failed publish or connection attempt.
    pub fn failed(&self, reason: Failure) {
        self.failures.with_label_values(&[reason.label()]).inc();
    }

    /// The number of unsent events, as last counted in the database.
    pub fn set_pending(&self, unsent: i64) {
        self.pending.set(unsent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_have_their_prometheus_names_and_bounded_reasons() {
        // The four series exist under the documented names, every reason from the start.
        let registry = Registry::new();
        let m = EventMetrics::register(&registry).expect("register");
        m.set_pending(2);
        m.published(Duration::from_millis(30));
        m.failed(Failure::Nack);
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buf,
        )
        .expect("encode");
        let text = String::from_utf8(buf).expect("utf8");
        for line in [
            "orders_events_published_total 1",
            "orders_outbox_pending 1",
            "orders_event_publish_seconds_count 1",
            r#"orders_event_publish_failures_total{reason="nack"} 1"#,
            r#"orders_event_publish_failures_total{reason="connection"} 0"#,
            r#"orders_event_publish_failures_total{reason="channel"} 0"#,
            r#"orders_event_publish_failures_total{reason="timeout"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }
}
