//! The fleet's event contract over AMQP 0-9-1 (RabbitMQ), shared by the services that publish
//! events (`orders`) and those that consume them (`shipping`).
//!
//! - Events go to one durable topic exchange, [`EXCHANGE`], with a routing key per event type
//!   (`orders.placed` for [`ORDER_PLACED`]).
//! - The body is an [`Envelope`] in JSON. The AMQP properties repeat what a broker, a consumer
//!   or an operator needs without parsing the body: `message_id` is the event id (the consumer's
//!   idempotence key), `type` the event type, `content_type` `application/json`, and delivery
//!   mode 2 (persistent).
//! - The W3C `traceparent` (and `tracestate`) of the publishing span travel in the message
//!   headers, so the consumer's span joins the publisher's trace
//!   ([`set_parent_from_headers`]).

use std::collections::BTreeMap;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};
use serde::{Deserialize, Serialize};

/// The durable topic exchange every event is published to.
pub const EXCHANGE: &str = "flotilla.events";

/// Event type of a placed order; published with routing key [`ORDER_PLACED_KEY`].
pub const ORDER_PLACED: &str = "OrderPlaced";

/// Routing key of [`ORDER_PLACED`] events.
pub const ORDER_PLACED_KEY: &str = "orders.placed";

/// The largest event body a consumer accepts; a bigger one is dead-lettered unread.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `content_type` of every event.
pub const CONTENT_TYPE: &str = "application/json";

/// One event as it travels in a message body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    /// Unique per event, and the same on every delivery of it (also the AMQP `message_id`).
    pub id: uuid::Uuid,
    /// The event type, e.g. [`ORDER_PLACED`] (also the AMQP `type` property).
    #[serde(rename = "type")]
    pub kind: String,
    /// When the event happened (RFC 3339, UTC): for an order, when its transaction committed.
    pub occurred_at: String,
    /// The service that published it, e.g. `orders`.
    pub source: String,
    /// The event's own fields; their shape depends on `type`.
    pub data: serde_json::Value,
}

/// The `data` of an [`ORDER_PLACED`] event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    /// The order's id.
    pub order_id: String,
    /// The user who placed it (the token's subject).
    pub user_id: String,
    /// What was ordered.
    pub item: String,
    /// How many.
    pub quantity: u32,
}

/// Declares [`EXCHANGE`] as every publisher and consumer must: a durable topic exchange.
/// Idempotent; a broker holding it with other settings closes the channel.
pub async fn declare_exchange(channel: &Channel) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Makes `span` a child of the publisher's span named by a message's `traceparent` header.
/// Nothing happens with tracing off or without the header.
pub fn set_parent_from_headers(span: &tracing::Span, headers: Option<&FieldTable>) {
    let Some(headers) = headers else { return };
    let mut http = http::HeaderMap::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(value) = header_str(headers.inner(), key) {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                http.insert(key, value);
            }
        }
    }
    crate::telemetry::otlp::set_parent_from_headers(span, &http);
}

/// A string header's value (a long or short string), if the message has it.
pub fn header_str(headers: &BTreeMap<ShortString, AMQPValue>, key: &str) -> Option<String> {
    match headers.get(&ShortString::from(key))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::LongString;

    use super::*;

    #[test]
    fn an_envelope_round_trips_with_its_wire_names() {
        let envelope = Envelope {
            id: uuid::Uuid::nil(),
            kind: ORDER_PLACED.to_owned(),
            occurred_at: "2026-12-07T08:00:00Z".to_owned(),
            source: "orders".to_owned(),
            data: serde_json::json!({"orderId": "o1", "userId": "u1", "item": "book", "quantity": 2}),
        };
        let json = serde_json::to_value(&envelope).expect("an envelope serializes");
        assert_eq!(json["type"], "OrderPlaced");
        assert_eq!(json["occurredAt"], "2026-12-07T08:00:00Z");
        let back: Envelope = serde_json::from_value(json).expect("its JSON reads back");
        assert_eq!(back, envelope);
        let placed: OrderPlaced = serde_json::from_value(back.data).expect("OrderPlaced data");
        assert_eq!(placed.quantity, 2);
    }

    #[test]
    fn an_unknown_envelope_field_is_refused() {
        let err = serde_json::from_str::<Envelope>(
            r#"{"id":"00000000-0000-0000-0000-000000000000","type":"X","occurredAt":"t","source":"s","data":{},"extra":1}"#,
        )
        .expect_err("an unknown field");
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn string_headers_are_read_whatever_their_amqp_string_kind() {
        let mut table = FieldTable::default();
        table.insert(
            ShortString::from("traceparent"),
            AMQPValue::LongString(LongString::from("00-abc-def-01")),
        );
        table.insert(ShortString::from("n"), AMQPValue::LongInt(3));
        assert_eq!(
            header_str(table.inner(), "traceparent").as_deref(),
            Some("00-abc-def-01")
        );
        assert_eq!(header_str(table.inner(), "n"), None);
        assert_eq!(header_str(table.inner(), "missing"), None);
    }
}
