//! An event delivered twice (the same message id, as a publisher that retries after a lost
//! confirm sends it) is handled once: one shipment, the second delivery acknowledged and
//! counted as a duplicate.

use anyhow::Result;
use flotilla_testkit::amqp::Publisher;
use flotilla_testkit::rabbitmq::Broker;

use crate::support::{shipping, Shipping, WAIT};

#[tokio::test]
async fn an_event_published_twice_is_handled_once() -> Result<()> {
    let broker = Broker::shared().await?;
    let dir = tempfile::tempdir()?;
    let s = Shipping::start(shipping(&broker, "shipping-0", dir.path()), "shipping-0").await?;
    let publisher = Publisher::connect(&broker).await?;
    let twice = uuid::Uuid::new_v4();
    publisher.order_placed(twice, "order-twice").await?;
    publisher.order_placed(twice, "order-twice").await?;
    publisher
        .order_placed(uuid::Uuid::new_v4(), "order-once")
        .await?;

    s.wait_metric("shipping_events_acked_total", 3.0).await?;
    assert_eq!(s.metric("shipping_events_duplicate_total").await?, 1.0);
    assert_eq!(
        s.metric("shipping_events_consumed_total{type=\"OrderPlaced\"}")
            .await?,
        3.0
    );
    assert_eq!(s.metric("shipping_events_retried_total").await?, 0.0);
    let shipments = s.shipments().await?;
    assert_eq!(shipments.len(), 2, "{shipments:?}");
    let shipment = s.shipment("order-twice").await?.unwrap_or_default();
    assert_eq!(shipment["eventId"], twice.to_string());
    broker.wait_queue_len("shipping.orders", 0, WAIT).await?;
    Ok(())
}
