//! What an order's event says and the AMQP message an outbox row becomes. Pure: no database,
//! no broker, no clock (times come from the rows), so building twice gives the same message.
//!
//! The contract is the kit's ([`flotilla_kit::amqp`]): the body is an [`Envelope`] in JSON, and
//! the properties repeat what a broker or consumer needs without parsing it.

use flotilla_kit::amqp::{self, Envelope, OrderPlaced};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::db::{NewEvent, OrderRow, OutboxRow};

/// The `source` of every event and the `app_id` of every message orders publishes.
pub const SOURCE: &str = "orders";

/// AMQP delivery mode of a message the broker writes to disk on a durable queue.
pub const PERSISTENT: u8 = 2;

/// The W3C trace context of the request that made an event, stored with the event so the
/// consumer's span joins the request's trace however late the event is published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// `traceparent`; `None` with tracing off.
    pub traceparent: Option<String>,
    /// `tracestate`, if the trace has one.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The current span's context (nothing with tracing off).
    pub fn current() -> Self {
        let mut headers = http::HeaderMap::new();
        flotilla_kit::telemetry::otlp::inject_current(&mut headers);
        Self::from_headers(&headers)
    }

    /// Reads `traceparent` and `tracestate` from propagation headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        }
    }
}

fn invalid(what: &str) -> serde_json::Error {
    <serde_json::Error as serde::ser::Error>::custom(what)
}

/// The [`amqp::ORDER_PLACED`] event of a stored order, as the outbox keeps it. `occurredAt` is
/// the order's creation time, written in the same transaction.
pub fn order_placed(
    order: &OrderRow,
    event_id: uuid::Uuid,
    trace: TraceContext,
) -> Result<NewEvent, serde_json::Error> {
    let quantity = u32::try_from(order.quantity).map_err(|_| invalid("quantity out of range"))?;
    let occurred_at = jiff::Timestamp::from_millisecond(order.created_at)
        .map_err(|_| invalid("creation time out of range"))?;
    let envelope = Envelope {
        id: event_id,
        kind: amqp::ORDER_PLACED.to_owned(),
        occurred_at: occurred_at.to_string(),
        source: SOURCE.to_owned(),
        data: serde_json::to_value(OrderPlaced {
            order_id: order.id.to_string(),
            user_id: order.owner.clone(),
            item: order.item.clone(),
            quantity,
        })?,
    };
    Ok(NewEvent {
        event_id: event_id.to_string(),
        event_type: amqp::ORDER_PLACED.to_owned(),
        routing_key: amqp::ORDER_PLACED_KEY.to_owned(),
        body: serde_json::to_string(&envelope)?,
        traceparent: trace.traceparent,
        tracestate: trace.tracestate,
        created_at: order.created_at,
    })
}

/// One message, ready for `basic_publish` on [`amqp::EXCHANGE`].
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The routing key.
    pub routing_key: String,
    /// The JSON envelope.
    pub body: Vec<u8>,
    /// `message_id`, `type`, `content_type`, delivery mode, `timestamp`, `app_id` and the
    /// trace headers.
    pub properties: BasicProperties,
}

/// The message for an outbox row: its id is the message id (consumers deduplicate by it), its
/// type the `type`, its creation time (in seconds, as AMQP counts) the `timestamp`, and its
/// stored trace context the headers.
pub fn publication(row: &OutboxRow) -> Publication {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("traceparent", &row.traceparent),
        ("tracestate", &row.tracestate),
    ] {
        if let Some(value) = value {
            headers.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value.as_str())),
            );
        }
    }
    let seconds = u64::try_from(row.created_at.div_euclid(1000)).unwrap_or(0);
    Publication {
        routing_key: row.routing_key.clone(),
        body: row.body.clone().into_bytes(),
        properties: BasicProperties::default()
            .with_message_id(ShortString::from(row.event_id.as_str()))
            .with_type(ShortString::from(row.event_type.as_str()))
            .with_content_type(ShortString::from(amqp::CONTENT_TYPE))
            .with_delivery_mode(PERSISTENT)
            .with_timestamp(seconds)
            .with_app_id(ShortString::from(SOURCE))
            .with_headers(headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn order() -> OrderRow {
        OrderRow {
            id: 42,
            owner: "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c".into(),
            item: "tea".into(),
            quantity: 3,
            created_at: 1_796_630_400_123,
        }
    }

    fn stored(event: NewEvent) -> OutboxRow {
        OutboxRow {
            seq: 7,
            event_id: event.event_id,
            event_type: event.event_type,
            routing_key: event.routing_key,
            body: event.body,
            traceparent: event.traceparent,
            tracestate: event.tracestate,
            created_at: event.created_at,
        }
    }

    #[test]
    fn an_order_becomes_an_order_placed_envelope() {
        // The stored body is the kit's envelope with the order's fields, under the event id,
        // dated when the order was created; the routing key is the contract's.
        let id = uuid::Uuid::new_v4();
        let trace = TraceContext {
            traceparent: Some(TRACEPARENT.into()),
            tracestate: None,
        };
        let event = order_placed(&order(), id, trace.clone()).expect("event");
        assert_eq!(event.event_id, id.to_string());
        assert_eq!(event.event_type, amqp::ORDER_PLACED);
        assert_eq!(event.routing_key, amqp::ORDER_PLACED_KEY);
        assert_eq!(event.traceparent, trace.traceparent);
        assert_eq!(event.created_at, order().created_at);
        let envelope: Envelope = serde_json::from_str(&event.body).expect("envelope");
        assert_eq!(envelope.id, id);
        assert_eq!(envelope.kind, amqp::ORDER_PLACED);
        assert_eq!(envelope.source, SOURCE);
        assert_eq!(envelope.occurred_at, "2026-12-07T08:00:00.123Z");
        let data: OrderPlaced = serde_json::from_value(envelope.data).expect("data");
        assert_eq!(
            data,
            OrderPlaced {
                order_id: "42".into(),
                user_id: order().owner,
                item: "tea".into(),
                quantity: 3,
            }
        );
    }

    #[test]
    fn an_impossible_quantity_is_an_error_not_a_wrapped_number() {
        // A quantity that does not fit the contract's u32 fails the event (and so the order's
        // transaction) rather than publishing a different number.
        let mut bad = order();
        bad.quantity = -1;
        assert!(order_placed(&bad, uuid::Uuid::nil(), TraceContext::default()).is_err());
    }

    #[test]
    fn a_row_becomes_a_persistent_message_with_its_id_type_and_trace() {
        // Every property the contract names is set from the row, and building twice gives
        // equal messages (a republished event is the same message).
        let id = uuid::Uuid::new_v4();
        let trace = TraceContext {
            traceparent: Some(TRACEPARENT.into()),
            tracestate: Some("congo=t61rcWkgMzE".into()),
        };
        let row = stored(order_placed(&order(), id, trace).expect("event"));
        let message = publication(&row);
        assert_eq!(message, publication(&row));
        assert_eq!(message.routing_key, amqp::ORDER_PLACED_KEY);
        assert_eq!(message.body, row.body.as_bytes());
        let p = &message.properties;
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(id.to_string().as_str())
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some(amqp::ORDER_PLACED)
        );
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some(amqp::CONTENT_TYPE)
        );
        assert_eq!(*p.delivery_mode(), Some(PERSISTENT));
        assert_eq!(*p.timestamp(), Some(1_796_630_400));
        assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some(SOURCE));
        let headers = p.headers().as_ref().expect("headers");
        assert_eq!(
            amqp::header_str(headers.inner(), "traceparent").as_deref(),
            Some(TRACEPARENT)
        );
        assert_eq!(
            amqp::header_str(headers.inner(), "tracestate").as_deref(),
            Some("congo=t61rcWkgMzE")
        );
    }

    #[test]
    fn without_a_trace_the_message_has_no_trace_headers() {
        // Tracing off stores no context, and the message carries no empty header for it.
        let row = stored(
            order_placed(&order(), uuid::Uuid::nil(), TraceContext::current()).expect("event"),
        );
        assert_eq!(row.traceparent, None);
        let message = publication(&row);
        let headers = message.properties.headers().as_ref().expect("headers");
        assert!(headers.inner().is_empty(), "{headers:?}");
    }

    #[test]
    fn trace_context_is_read_from_propagation_headers() {
        // Exactly the two W3C headers are kept; anything else is ignored.
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", TRACEPARENT.parse().expect("value"));
        headers.insert("baggage", "k=v".parse().expect("value"));
        assert_eq!(
            TraceContext::from_headers(&headers),
            TraceContext {
                traceparent: Some(TRACEPARENT.into()),
                tracestate: None,
            }
        );
    }
}
