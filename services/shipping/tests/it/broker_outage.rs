//! The broker stops in the middle of a stream (messages queued and in flight): readiness fails
//! naming the `broker` check, the consumer reconnects when the broker is back, and every event
//! published before and after the outage is handled exactly once.

use anyhow::Result;
use flotilla_testkit::amqp::Publisher;
use flotilla_testkit::rabbitmq::Broker;
use flotilla_testkit::wait;
use serde_json::json;

use crate::support::{shipping, Shipping, WAIT};

#[tokio::test]
async fn readiness_names_the_broker_while_it_is_down_and_nothing_is_lost() -> Result<()> {
    let mut broker = Broker::start().await?;
    let dir = tempfile::tempdir()?;
    let s = Shipping::start(shipping(&broker, "shipping-0", dir.path()), "shipping-0").await?;
    let publisher = Publisher::connect(&broker).await?;
    let orders: Vec<String> = (0..15).map(|i| format!("order-{i}")).collect();
    for order in &orders[..5] {
        publisher.order_placed(uuid::Uuid::new_v4(), order).await?;
    }
    s.wait_metric("shipping_events_acked_total", 5.0).await?;

    // Slow handling down so the next events are queued or in flight when the broker stops.
    s.faults(json!({"latencyMs": 400})).await?;
    for order in &orders[5..10] {
        publisher.order_placed(uuid::Uuid::new_v4(), order).await?;
    }
    drop(publisher);
    s.wait_metric("shipping_events_consumed_total{type=\"OrderPlaced\"}", 6.0)
        .await?;
    broker.stop().await?;

    let failing = wait::poll("readiness to name the broker", WAIT, || async {
        let (status, body) = s.probe(None).await?;
        let broker_check = body["failing"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["check"] == "broker")
            .cloned();
        Ok((status == 503).then_some(broker_check).flatten())
    })
    .await?;
    let reason = failing["reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "{failing}");
    assert_eq!(s.metric("shipping_consuming").await?, 0.0);
    // Down for a few reconnect attempts.
    wait::poll("two failed reconnects", WAIT, || async {
        Ok((s.process.log().matches("broker unavailable").count() >= 3).then_some(()))
    })
    .await?;

    broker.start_again().await?;
    s.faults(json!({})).await?;
    wait::poll("ready again", WAIT, || async {
        Ok((s.probe(None).await?.0 == 200).then_some(()))
    })
    .await?;
    let publisher = Publisher::connect(&broker).await?;
    for order in &orders[10..] {
        publisher.order_placed(uuid::Uuid::new_v4(), order).await?;
    }

    let all = wait::poll("every order shipped", WAIT, || async {
        let shipped = s.shipments().await?;
        Ok((shipped.len() == orders.len()).then_some(shipped))
    })
    .await?;
    for order in &orders {
        assert!(
            all.iter().any(|s| s["orderId"] == order.as_str()),
            "{order} missing"
        );
    }
    let stored = s.metric("shipping_events_acked_total").await?
        - s.metric("shipping_events_duplicate_total").await?;
    assert_eq!(stored, orders.len() as f64, "each event stored once");
    broker.wait_queue_len("shipping.orders", 0, WAIT).await?;
    assert_eq!(broker.queue_len("shipping.dead-letter").await?, 0);
    Ok(())
}
