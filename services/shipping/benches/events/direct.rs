//! The consumer-only ceiling: `OrderPlaced` events published to the broker with lapin directly,
//! bypassing orders' API, outbox and relay, persistent and with publisher confirms (up to
//! [`IN_FLIGHT`] unconfirmed), each with `occurredAt` set when it is published. What shipping
//! alone can take, to compare the real path's events/s with; not a figure of that path.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use flotilla_kit::amqp::{
    Envelope, OrderPlaced, CONTENT_TYPE, EXCHANGE, ORDER_PLACED, ORDER_PLACED_KEY,
};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// Unconfirmed messages at most: enough that the publisher never waits on the consumer.
const IN_FLIGHT: usize = 256;

/// Publishes `n` events for orders `direct-<run>-<i>`; returns their order ids and how long
/// publishing took.
pub async fn publish(amqp_url: &str, run: usize, n: usize) -> Result<(Vec<String>, Duration)> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    let mut order_ids = Vec::with_capacity(n);
    let mut pending = Vec::with_capacity(IN_FLIGHT);
    for i in 0..n {
        let id = uuid::Uuid::new_v4();
        let order_id = format!("direct-{run}-{i}");
        let envelope = Envelope {
            id,
            kind: ORDER_PLACED.to_owned(),
            occurred_at: jiff::Timestamp::now().to_string(),
            source: "bench".to_owned(),
            data: serde_json::to_value(OrderPlaced {
                order_id: order_id.clone(),
                user_id: "bench-user".to_owned(),
                item: "book".to_owned(),
                quantity: 1,
            })?,
        };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(CONTENT_TYPE.into())
            .with_type(ORDER_PLACED.into())
            .with_message_id(id.to_string().into());
        let confirm = channel
            .basic_publish(
                EXCHANGE.into(),
                ORDER_PLACED_KEY.into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&envelope)?,
                props,
            )
            .await?;
        pending.push(confirm);
        order_ids.push(order_id);
        if pending.len() >= IN_FLIGHT {
            for c in pending.drain(..) {
                ensure!(c.await?.is_ack(), "publish not confirmed");
            }
        }
    }
    for c in pending.drain(..) {
        ensure!(c.await?.is_ack(), "publish not confirmed");
    }
    let published = started.elapsed();
    let _ = conn.close(200, "published".into()).await;
    Ok((order_ids, published))
}
