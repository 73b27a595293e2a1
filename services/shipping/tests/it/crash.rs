//! A consumer killed (SIGKILL, as an OOM kill or a lost node ends it) while a message is in
//! flight: the broker redelivers the unacknowledged message to the next consumer, which handles
//! it once.

use anyhow::Result;
use flotilla_testkit::amqp::Publisher;
use flotilla_testkit::rabbitmq::Broker;
use serde_json::json;

use crate::support::{shipping, Shipping, WAIT};

#[tokio::test]
async fn a_message_in_flight_at_a_crash_is_redelivered_and_handled_once() -> Result<()> {
    let broker = Broker::shared().await?;
    let dir = tempfile::tempdir()?;
    let first = Shipping::start(shipping(&broker, "shipping-0", dir.path()), "shipping-0").await?;
    // Hold the message in flight: handling waits 30 s before touching the database.
    first.faults(json!({"latencyMs": 30000})).await?;
    let publisher = Publisher::connect(&broker).await?;
    let id = uuid::Uuid::new_v4();
    publisher.order_placed(id, "order-crash").await?;
    first
        .wait_metric("shipping_events_consumed_total{type=\"OrderPlaced\"}", 1.0)
        .await?;
    assert_eq!(first.metric("shipping_events_acked_total").await?, 0.0);
    first.process.kill().await?;

    // The same pod restarted (same database file), faults gone with the process.
    let second = Shipping::start(shipping(&broker, "shipping-0", dir.path()), "shipping-0").await?;
    second
        .wait_metric("shipping_events_acked_total", 1.0)
        .await?;
    assert_eq!(second.metric("shipping_events_duplicate_total").await?, 0.0);
    let shipment = second.shipment("order-crash").await?.unwrap_or_default();
    assert_eq!(shipment["eventId"], id.to_string());
    assert_eq!(second.shipments().await?.len(), 1);
    broker.wait_queue_len("shipping.orders", 0, WAIT).await?;
    Ok(())
}
