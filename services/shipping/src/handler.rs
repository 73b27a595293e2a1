//! Handling one delivery, in its own span whose parent is the publisher's (`traceparent` in
//! the message headers): classify it, pass the fault gate, record it, then settle it exactly
//! one way: acknowledge, republish to the retry queue, or republish to the dead-letter
//! exchange. A republished message is acknowledged only after the broker confirmed the copy,
//! so nothing is lost; a crash in between delivers the event twice, which idempotent handling
//! absorbs.
//!
//! What to do is decided by [`decide`], a pure function of the classification, the handling
//! outcome and the attempts so far; this module's async part only carries it out.

use std::time::{Duration, Instant};

use flotilla_kit::amqp::set_parent_from_headers;
use flotilla_kit::Faults;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tracing::Instrument as _;

use crate::classify::{
    self, attempts, classify, Classified, Incoming, Reason, ATTEMPTS_HEADER, DETAIL_HEADER,
    REASON_HEADER,
};
use crate::db::{Db, DbError, Recorded};
use crate::metrics::EventMetrics;
use crate::retry::{AfterFailure, RetryPolicy};
use crate::topology::{DEAD_LETTER, RETRY_QUEUE};

/// How long a message whose settling failed (the broker refused the republished copy while the
/// channel stayed open) waits before it is handed back to the queue, so such a failure cannot
/// turn into a hot loop.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// `errorRate` of `/admin/faults` failed it (transient by definition).
    #[error("injected fault")]
    Injected,
    /// Storing it failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Failure {
    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Injected => true,
            Self::Db(e) => e.is_transient(),
        }
    }
}

/// How one delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (stored, or a duplicate): acknowledge.
    Ack {
        /// The event id was handled before.
        duplicate: bool,
    },
    /// Failed transiently: republish to the retry queue, to come back after `delay`.
    Retry {
        /// The wait (the copy's TTL).
        delay: Duration,
        /// Failed attempts so far, written to the copy's attempts header.
        attempts: u32,
        /// What failed.
        error: String,
    },
    /// Poison, a permanent failure, or out of attempts: republish to the dead-letter exchange.
    DeadLetter {
        /// The metric reason.
        reason: Reason,
        /// What exactly.
        detail: String,
    },
}

/// The decision for one delivery: poison is dead-lettered at once; a transient failure is
/// retried until the policy gives up; a permanent one is dead-lettered.
pub fn decide(
    classified: &Classified,
    outcome: Option<Result<Recorded, &Failure>>,
    attempts_before: u32,
    policy: &RetryPolicy,
) -> Disposition {
    if let Err(poison) = &classified.event {
        return Disposition::DeadLetter {
            reason: poison.reason,
            detail: poison.detail.clone(),
        };
    }
    match outcome {
        Some(Ok(recorded)) => Disposition::Ack {
            duplicate: recorded == Recorded::Duplicate,
        },
        Some(Err(failure)) if failure.is_transient() => {
            match policy.after_failure(attempts_before.saturating_add(1)) {
                AfterFailure::Retry { delay, attempts } => Disposition::Retry {
                    delay,
                    attempts,
                    error: failure.to_string(),
                },
                AfterFailure::GiveUp => Disposition::DeadLetter {
                    reason: Reason::RetriesExhausted,
                    detail: classify::truncate(format!(
                        "failed {} times, last: {failure}",
                        attempts_before.saturating_add(1)
                    )),
                },
            }
        }
        Some(Err(failure)) => Disposition::DeadLetter {
            reason: Reason::HandlingFailed,
            detail: classify::truncate(failure.to_string()),
        },
        // An event that was not handled cannot be settled as handled.
        None => Disposition::DeadLetter {
            reason: Reason::HandlingFailed,
            detail: "not handled".into(),
        },
    }
}

/// Handles deliveries; shared by the consumer's tasks.
#[derive(Debug, Clone)]
pub struct Handler {
    /// Shipment store.
    pub db: Db,
    /// Injected faults (`errorRate`, `latencyMs` apply to each event).
    pub faults: Faults,
    /// Metrics.
    pub metrics: EventMetrics,
    /// Retries of failed events.
    pub retry: RetryPolicy,
}

impl Handler {
    /// Handles one delivery and settles it; `publisher` (a channel in confirm mode) carries the
    /// republished copies.
    pub async fn handle(&self, delivery: Delivery, publisher: &Channel) {
        let started = Instant::now();
        let props = &delivery.properties;
        let message_id = props.message_id().as_ref().map(ShortString::as_str);
        let span = tracing::info_span!(
            "shipping.event",
            otel.kind = "consumer",
            message_id = message_id.unwrap_or("-"),
            redelivered = delivery.redelivered,
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        set_parent_from_headers(&span, props.headers().as_ref());
        // The handling's log lines name the trace the order started.
        flotilla_kit::telemetry::otlp::record_trace_id(&span);
        self.handle_in_span(&delivery, publisher)
            .instrument(span)
            .await;
        self.metrics
            .handling
            .observe(started.elapsed().as_secs_f64());
    }

    async fn handle_in_span(&self, delivery: &Delivery, publisher: &Channel) {
        let props = &delivery.properties;
        let before = attempts(props.headers().as_ref().map(FieldTable::inner));
        let classified = classify(Incoming {
            message_id: props.message_id().as_ref().map(ShortString::as_str),
            kind: props.kind().as_ref().map(ShortString::as_str),
            body: &delivery.data,
        });
        self.metrics
            .consumed
            .with_label_values(&[classified.type_label])
            .inc();
        let span = tracing::Span::current();
        span.record("attempts", before);
        let outcome = match &classified.event {
            Ok(event) => Some(self.process(event, classified.type_label).await),
            Err(_) => None,
        };
        let disposition = decide(
            &classified,
            outcome.as_ref().map(|r| r.as_ref().copied()),
            before,
            &self.retry,
        );
        self.settle(delivery, publisher, &disposition).await;
    }

    /// The fault gate, then the database.
    async fn process(&self, event: &classify::Event, kind: &str) -> Result<Recorded, Failure> {
        let faults = self.faults.get();
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
            return Err(Failure::Injected);
        }
        Ok(self.db.record(event, kind).await?)
    }

    async fn settle(&self, delivery: &Delivery, publisher: &Channel, disposition: &Disposition) {
        let span = tracing::Span::current();
        let result = match disposition {
            Disposition::Ack { duplicate } => {
                span.record("outcome", if *duplicate { "duplicate" } else { "stored" });
                let acked = delivery.ack(BasicAckOptions::default()).await;
                if acked.is_ok() {
                    self.metrics.acked.inc();
                    if *duplicate {
                        self.metrics.duplicate.inc();
                        tracing::info!("duplicate event acknowledged and ignored");
                    } else {
                        tracing::debug!("event handled");
                    }
                }
                acked.map_err(|e| e.to_string())
            }
            Disposition::Retry {
                delay,
                attempts,
                error,
            } => {
                span.record("outcome", "retried");
                let copy = republished(&delivery.properties, &[(ATTEMPTS_HEADER, int(*attempts))])
                    .with_expiration(ShortString::from(delay.as_millis().to_string()));
                let sent = publish(publisher, "", RETRY_QUEUE, &delivery.data, copy).await;
                match sent {
                    Ok(()) => {
                        self.metrics.retried.inc();
                        tracing::warn!(%error, attempts, retry_in = ?delay, "event failed, retrying later");
                        delivery
                            .ack(BasicAckOptions::default())
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e),
                }
            }
            Disposition::DeadLetter { reason, detail } => {
                span.record("outcome", "dead_lettered");
                let copy = republished(
                    &delivery.properties,
                    &[
                        (REASON_HEADER, text(reason.label())),
                        (DETAIL_HEADER, text(detail)),
                    ],
                );
                let sent = publish(
                    publisher,
                    DEAD_LETTER,
                    delivery.routing_key.as_str(),
                    &delivery.data,
                    copy,
                )
                .await;
                match sent {
                    Ok(()) => {
                        self.metrics
                            .dead_lettered
                            .with_label_values(&[reason.label()])
                            .inc();
                        tracing::warn!(
                            reason = reason.label(),
                            %detail,
                            "event dead-lettered to {DEAD_LETTER}"
                        );
                        delivery
                            .ack(BasicAckOptions::default())
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(error) = result {
            // The channel is most likely gone (broker down): the broker redelivers the message
            // to whoever consumes next. If it is still open, hand the message back after a
            // pause rather than leaving it unacknowledged.
            tracing::warn!(%error, "could not settle the message; it will be delivered again");
            tokio::time::sleep(REQUEUE_PAUSE).await;
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    }
}

fn int(n: u32) -> AMQPValue {
    AMQPValue::LongLongInt(n.into())
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A persistent copy of a message's properties (id, type, content type, timestamp, headers
/// with `extra` set), without its expiration.
fn republished(original: &BasicProperties, extra: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    for (key, value) in extra {
        headers.insert(ShortString::from(*key), value.clone());
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = original.message_id() {
        props = props.with_message_id(v.clone());
    }
    if let Some(v) = original.kind() {
        props = props.with_type(v.clone());
    }
    if let Some(v) = original.content_type() {
        props = props.with_content_type(v.clone());
    }
    if let Some(v) = original.timestamp() {
        props = props.with_timestamp(*v);
    }
    if let Some(v) = original.correlation_id() {
        props = props.with_correlation_id(v.clone());
    }
    props
}

/// Publishes and waits for the broker's confirmation.
async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), String> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .map_err(|e| format!("publishing to {exchange:?}/{routing_key}: {e}"))?;
    let confirmation = confirm
        .await
        .map_err(|e| format!("confirming to {exchange:?}/{routing_key}: {e}"))?;
    if confirmation.is_ack() {
        Ok(())
    } else {
        Err(format!(
            "the broker refused the copy for {exchange:?}/{routing_key}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Event, Poison};
    use flotilla_kit::amqp::OrderPlaced;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };

    fn event() -> Classified {
        Classified {
            type_label: "OrderPlaced",
            event: Ok(Event {
                id: uuid::Uuid::nil(),
                occurred_at: "t".into(),
                order: OrderPlaced {
                    order_id: "o".into(),
                    user_id: "u".into(),
                    item: "i".into(),
                    quantity: 1,
                },
            }),
        }
    }

    #[test]
    fn handled_events_are_acked_and_duplicates_flagged() {
        // Stored and duplicate events are both acknowledged; only the duplicate is flagged.
        let e = event();
        assert_eq!(
            decide(&e, Some(Ok(Recorded::Stored)), 0, &POLICY),
            Disposition::Ack { duplicate: false }
        );
        assert_eq!(
            decide(&e, Some(Ok(Recorded::Duplicate)), 2, &POLICY),
            Disposition::Ack { duplicate: true }
        );
    }

    #[test]
    fn transient_failures_retry_with_growing_delays_then_dead_letter() {
        // An injected fault is retried after 100 ms, then 200 ms, and the third failure
        // dead-letters the event as out of attempts.
        let e = event();
        let f = Failure::Injected;
        let d1 = decide(&e, Some(Err(&f)), 0, &POLICY);
        let d2 = decide(&e, Some(Err(&f)), 1, &POLICY);
        let d3 = decide(&e, Some(Err(&f)), 2, &POLICY);
        assert!(
            matches!(d1, Disposition::Retry { delay, attempts: 1, .. } if delay == Duration::from_millis(100)),
            "{d1:?}"
        );
        assert!(
            matches!(d2, Disposition::Retry { delay, attempts: 2, .. } if delay == Duration::from_millis(200)),
            "{d2:?}"
        );
        assert!(
            matches!(
                d3,
                Disposition::DeadLetter {
                    reason: Reason::RetriesExhausted,
                    ..
                }
            ),
            "{d3:?}"
        );
    }

    #[test]
    fn poison_and_permanent_failures_dead_letter_at_once() {
        // Bad input never reaches the database and is never retried; neither is a failure
        // another attempt would meet again.
        let poison = Classified {
            type_label: "unknown",
            event: Err(Poison {
                reason: Reason::UnknownType,
                detail: "x".into(),
            }),
        };
        assert_eq!(
            decide(&poison, None, 0, &POLICY),
            Disposition::DeadLetter {
                reason: Reason::UnknownType,
                detail: "x".into()
            }
        );
        let permanent = Failure::Db(DbError::Permanent(sqlx::Error::Protocol("bad".into())));
        assert!(matches!(
            decide(&event(), Some(Err(&permanent)), 0, &POLICY),
            Disposition::DeadLetter {
                reason: Reason::HandlingFailed,
                ..
            }
        ));
    }

    #[test]
    fn a_republished_copy_keeps_identity_and_trace_and_drops_expiry() {
        // The retry and dead-letter copies keep the event id, type and traceparent, are
        // persistent, and carry the added header but not the original's expiration.
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), text("00-abc-def-01"));
        let original = BasicProperties::default()
            .with_message_id("m1".into())
            .with_type("OrderPlaced".into())
            .with_expiration("500".into())
            .with_headers(headers);
        let copy = republished(&original, &[(ATTEMPTS_HEADER, int(2))]);
        assert_eq!(
            copy.message_id().as_ref().map(ShortString::as_str),
            Some("m1")
        );
        assert_eq!(
            copy.kind().as_ref().map(ShortString::as_str),
            Some("OrderPlaced")
        );
        assert_eq!(*copy.delivery_mode(), Some(2));
        assert_eq!(*copy.expiration(), None);
        let h = copy.headers().clone().unwrap_or_default();
        assert_eq!(attempts(Some(h.inner())), 2);
        assert_eq!(
            flotilla_kit::amqp::header_str(h.inner(), "traceparent").as_deref(),
            Some("00-abc-def-01")
        );
    }
}
