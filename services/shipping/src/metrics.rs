//! The consumer's Prometheus metrics, registered beside the kit's HTTP metrics so `/metrics`
//! serves both. Every label value comes from a fixed set ([`crate::classify::TYPE_LABELS`],
//! [`Reason::label`]), and every series exists from the start at zero.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::classify::{Reason, TYPE_LABELS};

/// The consumer's metrics; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    /// `shipping_events_consumed_total{type}`.
    pub consumed: IntCounterVec,
    /// `shipping_events_acked_total`.
    pub acked: IntCounter,
    /// `shipping_events_duplicate_total`.
    pub duplicate: IntCounter,
    /// `shipping_events_retried_total`.
    pub retried: IntCounter,
    /// `shipping_events_dead_lettered_total{reason}`.
    pub dead_lettered: IntCounterVec,
    /// `shipping_event_handling_seconds`.
    pub handling: Histogram,
    /// `shipping_consuming`.
    pub consuming: IntGauge,
}

impl EventMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let consumed = IntCounterVec::new(
            Opts::new(
                "shipping_events_consumed_total",
                "Messages received from the broker, by event type (known types, else unknown).",
            ),
            &["type"],
        )?;
        let acked = IntCounter::new(
            "shipping_events_acked_total",
            "Events handled and acknowledged: stored, or recognised as duplicates.",
        )?;
        let duplicate = IntCounter::new(
            "shipping_events_duplicate_total",
            "Events whose id was handled before; acknowledged and ignored.",
        )?;
        let retried = IntCounter::new(
            "shipping_events_retried_total",
            "Events whose handling failed transiently and that were sent to the retry queue.",
        )?;
        let dead_lettered = IntCounterVec::new(
            Opts::new(
                "shipping_events_dead_lettered_total",
                "Messages moved to the dead-letter queue, by reason.",
            ),
            &["reason"],
        )?;
        let handling = Histogram::with_opts(
            HistogramOpts::new(
                "shipping_event_handling_seconds",
                "Time from receiving a message to settling it (ack, retry or dead-letter).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let consuming = IntGauge::new(
            "shipping_consuming",
            "1 while this pod consumes from its queue; 0 while it is ejected, draining or \
             without a broker.",
        )?;
        for label in TYPE_LABELS {
            consumed.with_label_values(&[label]);
        }
        for reason in Reason::ALL {
            dead_lettered.with_label_values(&[reason.label()]);
        }
        registry.register(Box::new(consumed.clone()))?;
        registry.register(Box::new(acked.clone()))?;
        registry.register(Box::new(duplicate.clone()))?;
        registry.register(Box::new(retried.clone()))?;
        registry.register(Box::new(dead_lettered.clone()))?;
        registry.register(Box::new(handling.clone()))?;
        registry.register(Box::new(consuming.clone()))?;
        Ok(Self {
            consumed,
            acked,
            duplicate,
            retried,
            dead_lettered,
            handling,
            consuming,
        })
    }
}
