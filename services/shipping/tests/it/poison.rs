//! Poison never blocks the queue: a malformed body, an unknown type, a message without an id
//! and an oversized body are dead-lettered at once, and an event failing on every attempt (an
//! injected fault) is retried with backoff, then dead-lettered; each under its metric reason,
//! with the reason in the dead-lettered message, and the consumer keeps working.

use anyhow::{Context, Result};
use flotilla_kit::amqp::{header_str, MAX_BODY_BYTES};
use flotilla_testkit::amqp::{connect, order_placed_body, Publisher};
use flotilla_testkit::rabbitmq::Broker;
use lapin::options::BasicGetOptions;
use serde_json::json;

use crate::support::{shipping, Shipping, WAIT};

#[tokio::test]
async fn poison_and_exhausted_retries_end_in_the_dead_letter_queue() -> Result<()> {
    let broker = Broker::shared().await?;
    let dir = tempfile::tempdir()?;
    let s = Shipping::start(shipping(&broker, "shipping-0", dir.path()), "shipping-0").await?;
    let publisher = Publisher::connect(&broker).await?;

    let id = uuid::Uuid::new_v4().to_string();
    publisher.raw(Some(&id), b"{not json").await?;
    let unknown = uuid::Uuid::new_v4();
    let body = String::from_utf8(order_placed_body(unknown, "o-unknown"))?
        .replace("OrderPlaced", "OrderCancelled");
    publisher
        .raw(Some(&unknown.to_string()), body.as_bytes())
        .await?;
    publisher
        .raw(None, &order_placed_body(uuid::Uuid::new_v4(), "o-no-id"))
        .await?;
    publisher
        .raw(Some(&id), &vec![b'x'; MAX_BODY_BYTES + 1])
        .await?;
    broker
        .wait_queue_len("shipping.dead-letter", 4, WAIT)
        .await?;
    for reason in ["malformed", "unknown_type", "missing_id", "oversized"] {
        let series = format!("shipping_events_dead_lettered_total{{reason=\"{reason}\"}}");
        assert_eq!(s.metric(&series).await?, 1.0, "{series}");
    }
    assert_eq!(s.metric("shipping_events_retried_total").await?, 0.0);
    assert_eq!(
        s.metric("shipping_events_consumed_total{type=\"unknown\"}")
            .await?,
        1.0
    );

    // Every attempt fails: 3 attempts (2 retries after 100 ms and 200 ms), then dead-lettered.
    s.faults(json!({"errorRate": 1.0})).await?;
    let failing = uuid::Uuid::new_v4();
    publisher.order_placed(failing, "o-failing").await?;
    s.wait_metric(
        "shipping_events_dead_lettered_total{reason=\"retries_exhausted\"}",
        1.0,
    )
    .await?;
    assert_eq!(s.metric("shipping_events_retried_total").await?, 2.0);
    broker
        .wait_queue_len("shipping.dead-letter", 5, WAIT)
        .await?;
    broker.wait_queue_len("shipping.retry", 0, WAIT).await?;

    // The dead-lettered copies say why; the last one is the failing event.
    let (_conn, channel) = connect(&broker).await?;
    let mut reasons = Vec::new();
    while let Some(msg) = channel
        .basic_get(
            "shipping.dead-letter".into(),
            BasicGetOptions { no_ack: true },
        )
        .await?
    {
        let headers = msg
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let reason = header_str(headers.inner(), "x-shipping-reason").context("no reason")?;
        if reason == "retries_exhausted" {
            let message_id = msg.delivery.properties.message_id().clone();
            assert_eq!(message_id.map(|m| m.to_string()), Some(failing.to_string()));
            let detail = header_str(headers.inner(), "x-shipping-detail").unwrap_or_default();
            assert!(detail.contains("injected fault"), "{detail}");
        }
        reasons.push(reason);
    }
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "malformed",
            "missing_id",
            "oversized",
            "retries_exhausted",
            "unknown_type"
        ]
    );

    // Still consuming: a good event after the faults are cleared is handled.
    s.faults(json!({})).await?;
    assert!(s.shipment("o-failing").await?.is_none());
    publisher
        .order_placed(uuid::Uuid::new_v4(), "o-good")
        .await?;
    s.wait_metric("shipping_events_acked_total", 1.0).await?;
    assert!(s.shipment("o-good").await?.is_some());
    Ok(())
}
