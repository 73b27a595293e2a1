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

/// A channel on a connection of its own, the events exchange declared on it as the contract
/// says. The channel closes with the connection, so both are kept.
struct Link {
    channel: Channel,
    _conn: Connection,
}

impl Link {
    async fn open(broker: &Broker) -> Result<Self> {
        let (conn, channel) = connect(broker).await?;
        amqp::declare_exchange(&channel).await?;
        Ok(Self {
            channel,
            _conn: conn,
        })
    }
}

/// A publisher of the event contract, with publisher confirms.
pub struct Publisher(Link);

impl Publisher {
    /// Connects, declares the events exchange and turns publisher confirms on.
    pub async fn connect(broker: &Broker) -> Result<Self> {
        let link = Link::open(broker).await?;
        link.channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self(link))
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
            .0
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
    /// The message's AMQP properties as the broker delivered them.
    pub properties: BasicProperties,
    /// The body.
    pub envelope: Envelope,
}

impl Received {
    /// The message id: the event id, a consumer's idempotence key.
    pub fn message_id(&self) -> Option<&str> {
        text(self.properties.message_id())
    }

    /// The W3C `traceparent` header of the publishing span.
    pub fn traceparent(&self) -> Option<String> {
        let headers = self.properties.headers().as_ref()?;
        amqp::header_str(headers.inner(), "traceparent")
    }

    /// The event's `OrderPlaced` fields.
    pub fn placed(&self) -> Result<OrderPlaced> {
        Ok(serde_json::from_value(self.envelope.data.clone())?)
    }

    fn of(delivery: &Delivery) -> Result<Self> {
        Ok(Self {
            properties: delivery.properties.clone(),
            envelope: serde_json::from_slice(&delivery.data).context("the body is no envelope")?,
        })
    }
}

/// A text property's value, e.g. `text(received.properties.kind())`.
pub fn text(property: &Option<ShortString>) -> Option<&str> {
    property.as_ref().map(ShortString::as_str)
}

/// A consumer's view of the exchange: [`TAP_QUEUE`], bound to `orders.placed`.
pub struct Tap(Link);

impl Tap {
    /// Declares the exchange (as the services do), the queue and the binding; idempotent, so it
    /// also reconnects after a broker restart.
    pub async fn bind(broker: &Broker) -> Result<Self> {
        let link = Link::open(broker).await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        link.channel
            .queue_declare(TAP_QUEUE.into(), durable, FieldTable::default())
            .await?;
        link.channel
            .queue_bind(
                TAP_QUEUE.into(),
                EXCHANGE.into(),
                ORDER_PLACED_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self(link))
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
                    if !got.iter().any(|r| r.message_id() == received.message_id()) {
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
            .0
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
        let broker = Broker::shared().await?;
        let tap = Tap::bind(&broker).await?;
        let publisher = Publisher::connect(&broker).await?;
        let (first, second) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        publisher.order_placed(first, "o-1").await?;
        publisher.order_placed(first, "o-1").await?;
        publisher.order_placed(second, "o-2").await?;

        let got = tap.take(2, Duration::from_secs(30)).await?;
        let ids: Vec<_> = got.iter().filter_map(Received::message_id).collect();
        assert_eq!(ids, [first.to_string(), second.to_string()]);
        assert_eq!(got[0].placed()?.order_id, "o-1");
        assert_eq!(got[0].envelope.id, first);
        let props = &got[0].properties;
        assert_eq!(text(props.kind()), Some(ORDER_PLACED));
        assert_eq!(text(props.content_type()), Some(CONTENT_TYPE));
        assert_eq!(*props.delivery_mode(), Some(2));
        assert!(tap.take_all().await?.is_empty());
        assert_eq!(broker.queue_len(TAP_QUEUE).await?, 0);
        Ok(())
    }
}
