//! The consumer-only ceiling: `OrderPlaced` events published to the broker with lapin directly
//! (`flotilla_testkit::amqp`'s publisher), bypassing orders' API, outbox and relay, persistent
//! and with publisher confirms (up to [`IN_FLIGHT`] unconfirmed), each with `occurredAt` set
//! when it is published. What shipping alone can take, to compare the real path's events/s
//! with; not a figure of that path.

use std::time::{Duration, Instant};

use anyhow::Result;
use flotilla_testkit::amqp::{order_placed_body, Publisher};
use flotilla_testkit::rabbitmq::Broker;

/// Unconfirmed messages at most: enough that the publisher never waits on the consumer.
const IN_FLIGHT: usize = 256;

/// Publishes `n` events for orders `direct-<run>-<i>`; returns their order ids and how long
/// publishing took.
pub async fn publish(broker: &Broker, run: usize, n: usize) -> Result<(Vec<String>, Duration)> {
    let publisher = Publisher::connect(broker).await?;
    let started = Instant::now();
    let mut order_ids = Vec::with_capacity(n);
    let mut pending = Vec::with_capacity(IN_FLIGHT);
    for i in 0..n {
        let id = uuid::Uuid::new_v4();
        let order_id = format!("direct-{run}-{i}");
        let body = order_placed_body(id, &order_id);
        pending.push(publisher.send(Some(&id.to_string()), &body).await?);
        order_ids.push(order_id);
        if pending.len() >= IN_FLIGHT {
            for confirm in pending.drain(..) {
                confirm.acked().await?;
            }
        }
    }
    for confirm in pending.drain(..) {
        confirm.acked().await?;
    }
    Ok((order_ids, started.elapsed()))
}
