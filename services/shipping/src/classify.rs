//! Reading one delivery: what it is (an event to handle, or poison to dead-letter at once)
//! and how many attempts it already had. Pure: no channel, no database; the consumer passes
//! the parts of a delivery in and acts on the answer.

use std::collections::BTreeMap;

use flotilla_kit::amqp::{Envelope, OrderPlaced, MAX_BODY_BYTES, ORDER_PLACED};
use lapin::types::{AMQPValue, ShortString};

/// Message header counting the failed handling attempts of an event, set when it is sent to
/// the retry queue.
pub const ATTEMPTS_HEADER: &str = "x-shipping-attempts";

/// Message header naming why an event was dead-lettered (a [`Reason`] label).
pub const REASON_HEADER: &str = "x-shipping-reason";

/// Message header with the detail of a dead-lettering (an error message, at most
/// [`MAX_DETAIL`] bytes).
pub const DETAIL_HEADER: &str = "x-shipping-detail";

/// Longest detail kept in a dead-lettered message's header and in a log line.
pub const MAX_DETAIL: usize = 512;

/// Why an event was dead-lettered; the `reason` label of
/// `shipping_events_dead_lettered_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The body is larger than [`MAX_BODY_BYTES`]; it is not read.
    Oversized,
    /// The message has no `message_id`, so it cannot be handled idempotently.
    MissingId,
    /// The body is not an [`Envelope`] in JSON, or its `data` does not fit its type.
    Malformed,
    /// `message_id` differs from the envelope's `id`: which one is the event?
    IdMismatch,
    /// An event type this service does not handle.
    UnknownType,
    /// Handling failed on every allowed attempt.
    RetriesExhausted,
    /// Handling failed in a way another attempt cannot fix.
    HandlingFailed,
}

impl Reason {
    /// The metric label and header value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::MissingId => "missing_id",
            Self::Malformed => "malformed",
            Self::IdMismatch => "id_mismatch",
            Self::UnknownType => "unknown_type",
            Self::RetriesExhausted => "retries_exhausted",
            Self::HandlingFailed => "handling_failed",
        }
    }

    /// Every reason, for registering the metric's series up front.
    pub const ALL: [Self; 7] = [
        Self::Oversized,
        Self::MissingId,
        Self::Malformed,
        Self::IdMismatch,
        Self::UnknownType,
        Self::RetriesExhausted,
        Self::HandlingFailed,
    ];
}

/// The event types this service handles, and `unknown`: the bounded `type` label of
/// `shipping_events_consumed_total`.
pub const TYPE_LABELS: [&str; 2] = [ORDER_PLACED, "unknown"];

/// The `type` label of an event type as sent: itself when known, else `unknown`.
pub fn type_label(kind: Option<&str>) -> &'static str {
    match kind {
        Some(ORDER_PLACED) => ORDER_PLACED,
        _ => "unknown",
    }
}

/// A delivery that cannot be handled, ever: dead-letter it at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// The metric reason.
    pub reason: Reason,
    /// What exactly is wrong, for the log line and the dead-lettered message.
    pub detail: String,
}

/// An event this service handles.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event id (the AMQP `message_id` and the envelope's `id`).
    pub id: uuid::Uuid,
    /// When it happened, as the publisher wrote it.
    pub occurred_at: String,
    /// The placed order.
    pub order: OrderPlaced,
}

/// The parts of a delivery classification reads.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The AMQP `message_id`.
    pub message_id: Option<&'a str>,
    /// The AMQP `type` property, used for the metric label when the body cannot be read.
    pub kind: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// Classification of one delivery: the type label for the consumed counter, and the event or
/// why it is poison.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// `shipping_events_consumed_total`'s `type` label.
    pub type_label: &'static str,
    /// The event to handle, or why not.
    pub event: Result<Event, Poison>,
}

fn poison(reason: Reason, detail: impl Into<String>) -> Poison {
    Poison {
        reason,
        detail: truncate(detail.into()),
    }
}

/// Shortens a detail to [`MAX_DETAIL`] bytes at a character boundary.
pub fn truncate(mut text: String) -> String {
    if text.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Reads a delivery. The size is checked before anything is parsed; the body's `type` decides
/// what the event is (the AMQP `type` only labels the metric when the body is unreadable).
pub fn classify(incoming: Incoming<'_>) -> Classified {
    let unreadable = |p: Poison| Classified {
        type_label: type_label(incoming.kind),
        event: Err(p),
    };
    if incoming.body.len() > MAX_BODY_BYTES {
        return unreadable(poison(
            Reason::Oversized,
            format!(
                "body of {} bytes is over the limit of {MAX_BODY_BYTES}",
                incoming.body.len()
            ),
        ));
    }
    let Some(message_id) = incoming.message_id.map(str::trim).filter(|s| !s.is_empty()) else {
        return unreadable(poison(Reason::MissingId, "the message has no message_id"));
    };
    let envelope: Envelope = match serde_json::from_slice(incoming.body) {
        Ok(e) => e,
        Err(e) => {
            return unreadable(poison(
                Reason::Malformed,
                format!("not an event envelope: {e}"),
            ))
        }
    };
    let label = type_label(Some(&envelope.kind));
    let fail = |p: Poison| Classified {
        type_label: label,
        event: Err(p),
    };
    if uuid::Uuid::parse_str(message_id).ok() != Some(envelope.id) {
        return fail(poison(
            Reason::IdMismatch,
            format!(
                "message_id {message_id:?} is not the event id {}",
                envelope.id
            ),
        ));
    }
    if envelope.kind != ORDER_PLACED {
        return fail(poison(
            Reason::UnknownType,
            format!("event type {:?} is not handled here", envelope.kind),
        ));
    }
    match serde_json::from_value::<OrderPlaced>(envelope.data) {
        Ok(order) if !order.order_id.trim().is_empty() => Classified {
            type_label: label,
            event: Ok(Event {
                id: envelope.id,
                occurred_at: envelope.occurred_at,
                order,
            }),
        },
        Ok(_) => fail(poison(Reason::Malformed, "orderId is empty")),
        Err(e) => fail(poison(
            Reason::Malformed,
            format!("data is not an {ORDER_PLACED}: {e}"),
        )),
    }
}

/// The failed attempts an event already had (its [`ATTEMPTS_HEADER`]); 0 when absent or not
/// an integer.
pub fn attempts(headers: Option<&BTreeMap<ShortString, AMQPValue>>) -> u32 {
    let Some(value) = headers.and_then(|h| h.get(&ShortString::from(ATTEMPTS_HEADER))) else {
        return 0;
    };
    let n: Option<i128> = match value {
        AMQPValue::ShortShortInt(v) => Some((*v).into()),
        AMQPValue::ShortShortUInt(v) => Some((*v).into()),
        AMQPValue::ShortInt(v) => Some((*v).into()),
        AMQPValue::ShortUInt(v) => Some((*v).into()),
        AMQPValue::LongInt(v) => Some((*v).into()),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::LongLongInt(v) => Some((*v).into()),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    const ID: &str = "7d4f3c2a-1b0e-4f9d-8c7b-6a5e4d3c2b1a";

    fn body(kind: &str, data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": ID, "type": kind, "occurredAt": "2026-12-07T08:00:00Z",
            "source": "orders", "data": data,
        }))
        .expect("json")
    }

    fn placed() -> serde_json::Value {
        serde_json::json!({"orderId": "o1", "userId": "u1", "item": "book", "quantity": 2})
    }

    fn run(message_id: Option<&str>, body: &[u8]) -> Classified {
        classify(Incoming {
            message_id,
            kind: Some(ORDER_PLACED),
            body,
        })
    }

    fn reason(c: &Classified) -> Option<Reason> {
        c.event.as_ref().err().map(|p| p.reason)
    }

    #[test]
    fn a_well_formed_order_placed_is_an_event() {
        // The contract's envelope with its data yields the event, keyed by the message id.
        let c = run(Some(ID), &body(ORDER_PLACED, placed()));
        assert_eq!(c.type_label, ORDER_PLACED);
        let event = c.event.expect("an event");
        assert_eq!(event.id.to_string(), ID);
        assert_eq!(event.order.order_id, "o1");
        assert_eq!(event.order.quantity, 2);
    }

    #[test]
    fn each_kind_of_bad_input_is_poison_with_its_reason() {
        // Bad input is dead-lettered at once, each case under its own bounded reason, and the
        // type label stays within the known types and `unknown`.
        let good = body(ORDER_PLACED, placed());
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let cases: Vec<(Classified, Reason)> = vec![
            (run(Some(ID), &big), Reason::Oversized),
            (run(None, &good), Reason::MissingId),
            (run(Some("  "), &good), Reason::MissingId),
            (run(Some(ID), b"{not json"), Reason::Malformed),
            (run(Some(ID), b"[]"), Reason::Malformed),
            (
                run(
                    Some(ID),
                    &body(ORDER_PLACED, serde_json::json!({"orderId": 1})),
                ),
                Reason::Malformed,
            ),
            (
                run(
                    Some(ID),
                    &body(
                        ORDER_PLACED,
                        serde_json::json!({"orderId": " ", "userId": "u", "item": "i", "quantity": 1}),
                    ),
                ),
                Reason::Malformed,
            ),
            (
                run(Some("00000000-0000-0000-0000-000000000000"), &good),
                Reason::IdMismatch,
            ),
            (run(Some("not-a-uuid"), &good), Reason::IdMismatch),
            (
                run(Some(ID), &body("OrderCancelled", placed())),
                Reason::UnknownType,
            ),
        ];
        for (c, want) in &cases {
            assert_eq!(reason(c), Some(*want), "{c:?}");
            assert!(TYPE_LABELS.contains(&c.type_label), "{c:?}");
            let detail = &c.event.as_ref().err().map(|p| p.detail.clone());
            assert!(detail.as_ref().is_some_and(|d| !d.is_empty()), "{c:?}");
        }
        let unknown = run(Some(ID), &body("OrderCancelled", placed()));
        assert_eq!(unknown.type_label, "unknown");
    }

    #[test]
    fn an_oversized_body_is_refused_before_it_is_parsed() {
        // A huge body that would parse is still refused for its size (and its detail stays short).
        let mut padded = body(ORDER_PLACED, placed());
        padded.extend(std::iter::repeat_n(b' ', MAX_BODY_BYTES));
        let c = run(None, &padded);
        assert_eq!(reason(&c), Some(Reason::Oversized));
        assert_eq!(truncate("é".repeat(MAX_DETAIL)).len(), MAX_DETAIL);
    }

    #[test]
    fn the_attempts_header_is_read_whatever_its_integer_kind() {
        // The retry count survives whichever integer type a broker or tool wrote, and a
        // missing or foreign value counts as no attempt.
        let mut table = FieldTable::default();
        assert_eq!(attempts(Some(table.inner())), 0);
        assert_eq!(attempts(None), 0);
        for (value, want) in [
            (AMQPValue::LongLongInt(3), 3),
            (AMQPValue::LongInt(2), 2),
            (AMQPValue::ShortShortUInt(4), 4),
            (AMQPValue::LongLongInt(-1), 0),
            (AMQPValue::Boolean(true), 0),
        ] {
            table.insert(ShortString::from(ATTEMPTS_HEADER), value);
            assert_eq!(attempts(Some(table.inner())), want);
        }
    }
}
