//! The fleet's event contract (`flotilla_kit::amqp`) as tests and benchmarks speak it to a
//! [`Broker`]: a [`Publisher`] that publishes events as orders does, with publisher confirms,
//! and a [`Tap`], a durable queue bound to the events exchange that a test reads events from as
//! a consumer would. Plumbing only: what a test expects of the events is in the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_kit::amqp::{
    self, Envelope, OrderPlaced, CONTENT_TYPE, EXCHANGE, ORDER_PLACED, ORDER_PLACED_KEY,
};
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};

use crate::rabbitmq::Broker;
use crate::wait;

/// The durable queue a [`Tap`] reads; it keeps what is published while no tap is connected.
pub const TAP_QUEUE: &str = "flotilla-test-tap";

/// The user of the events a test publishes.
const USER: &str = "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c";

/// A connection to `broker` and a channel on it. The channel closes with the connection, so
/// keep both.
pub async fn connect(broker: &Broker) -> Result<(Connection, Channel)> {
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to the broker at {}", broker.addr()))?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

/// A publisher of the event contract, with publisher confirms.
pub struct Publisher {
    _conn: Connection,
    channel: Channel,
}

impl Publisher {
    /// Connects and declares the events exchange as the contract says.
    pub async fn connect(broker: &Broker) -> Result<Self> {
        let (conn, channel) = connect(broker).await?;
        amqp::declare_exchange(&channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            _conn: conn,
            channel,
        })
    }

    /// Publishes an `OrderPlaced` for `order` with event id `id`; waits for the confirm.
    pub async fn order_placed(&self, id: uuid::Uuid, order: &str) -> Result<()> {
        self.raw(Some(&id.to_string()), &order_placed_body(id, order))
            .await
    }

    /// Publishes `body` with `message_id` (and the contract's other properties) to
    /// `orders.placed`; waits for the confirm.
    pub async fn raw(&self, message_id: Option<&str>, body: &[u8]) -> Result<()> {
        self.send(message_id, body).await?.acked().await
    }

    /// Publishes as [`Publisher::raw`] does, without waiting for the confirm: a benchmark keeps
    /// many in flight.
    pub async fn send(&self, message_id: Option<&str>, body: &[u8]) -> Result<Confirm> {
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(CONTENT_TYPE.into())
            .with_type(ORDER_PLACED.into());
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                EXCHANGE.into(),
                ORDER_PLACED_KEY.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?;
        Ok(Confirm(confirm))
    }
}

/// The broker's answer to one published message, still to come.
pub struct Confirm(PublisherConfirm);

impl Confirm {
    /// Waits for the answer; fails unless the broker took the message.
    pub async fn acked(self) -> Result<()> {
        ensure!(self.0.await?.is_ack(), "the broker did not confirm");
        Ok(())
    }
}

/// The JSON body of an `OrderPlaced` event for `order`, as orders publishes it, its
/// `occurredAt` now.
pub fn order_placed_body(id: uuid::Uuid, order: &str) -> Vec<u8> {
    let envelope = Envelope {
        id,
        kind: ORDER_PLACED.to_owned(),
        occurred_at: jiff::Timestamp::now().to_string(),
        source: "orders".to_owned(),
        data: serde_json::to_value(OrderPlaced {
            order_id: order.to_owned(),
            user_id: USER.to_owned(),
            item: "book".to_owned(),
            quantity: 1,
        })
        .unwrap_or_default(),
    };
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// One event as a consumer receives it.
#[derive(Debug)]
pub struct Received {
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub content_type: Option<String>,
    pub app_id: Option<String>,
    pub delivery_mode: Option<u8>,
    pub traceparent: Option<String>,
    pub envelope: Envelope,
}

impl Received {
    /// The event's `OrderPlaced` fields.
    pub fn placed(&self) -> Result<OrderPlaced> {
        Ok(serde_json::from_value(self.envelope.data.clone())?)
    }

    fn of(delivery: &Delivery) -> Result<Self> {
        let p = &delivery.properties;
        let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
        Ok(Self {
            message_id: text(p.message_id()),
            kind: text(p.kind()),
            content_type: text(p.content_type()),
            app_id: text(p.app_id()),
            delivery_mode: *p.delivery_mode(),
            traceparent: p
                .headers()
                .as_ref()
                .and_then(|h| amqp::header_str(h.inner(), "traceparent")),
            envelope: serde_json::from_slice(&delivery.data).context("the body is no envelope")?,
        })
    }
}

/// A consumer's view of the exchange: [`TAP_QUEUE`], bound to `orders.placed`.
pub struct Tap {
    channel: Channel,
    _conn: Connection,
}

impl Tap {
    /// Declares the exchange (as the services do), the queue and the binding; idempotent, so it
    /// also reconnects after a broker restart.
    pub async fn bind(broker: &Broker) -> Result<Self> {
        let (conn, channel) = connect(broker).await?;
        amqp::declare_exchange(&channel).await?;
        channel
            .queue_declare(
                TAP_QUEUE.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                TAP_QUEUE.into(),
                EXCHANGE.into(),
                ORDER_PLACED_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            channel,
            _conn: conn,
        })
    }

    /// Takes events off the queue until `n` distinct event ids arrived (a consumer deduplicates
    /// by message id), within `timeout`; returns them one per id.
    pub async fn take(&self, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let got = Arc::new(Mutex::new(Vec::<Received>::new()));
        wait::poll(&format!("{n} events on {TAP_QUEUE}"), timeout, || {
            let got = got.clone();
            async move {
                let next = self.next().await?;
                let mut got = got.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                if let Some(received) = next {
                    if !got.iter().any(|r| r.message_id == received.message_id) {
                        got.push(received);
                    }
                }
                Ok((got.len() >= n).then_some(()))
            }
        })
        .await?;
        let mut got = got.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(std::mem::take(&mut *got))
    }

    /// Takes every message on the queue now, each copy of an event apart.
    pub async fn take_all(&self) -> Result<Vec<Received>> {
        let mut all = Vec::new();
        while let Some(received) = self.next().await? {
            all.push(received);
        }
        Ok(all)
    }

    /// The next message, if the queue holds one.
    async fn next(&self) -> Result<Option<Received>> {
        let message = self
            .channel
            .basic_get(TAP_QUEUE.into(), BasicGetOptions { no_ack: true })
            .await?;
        message.map(|m| Received::of(&m.delivery)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tap_receives_each_published_event_with_the_contracts_properties() -> Result<()> {
        // What the publisher sends to the exchange reaches a bound tap with its message id,
        // type, content type and persistence, and a copy of an event is taken once.
        let broker = Broker::start().await?;
        let tap = Tap::bind(&broker).await?;
        let publisher = Publisher::connect(&broker).await?;
        let (first, second) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        publisher.order_placed(first, "o-1").await?;
        publisher.order_placed(first, "o-1").await?;
        publisher.order_placed(second, "o-2").await?;

        let got = tap.take(2, Duration::from_secs(30)).await?;
        let ids: Vec<_> = got.iter().map(|r| r.message_id.clone()).collect();
        assert_eq!(ids, [Some(first.to_string()), Some(second.to_string())]);
        assert_eq!(got[0].placed()?.order_id, "o-1");
        assert_eq!(got[0].envelope.id, first);
        assert_eq!(got[0].kind.as_deref(), Some(ORDER_PLACED));
        assert_eq!(got[0].content_type.as_deref(), Some(CONTENT_TYPE));
        assert_eq!(got[0].delivery_mode, Some(2));
        assert!(tap.take_all().await?.is_empty());
        assert_eq!(broker.queue_len(TAP_QUEUE).await?, 0);
        Ok(())
    }
}
