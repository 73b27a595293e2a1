//! Consumers fail over too: a pod Flotilla ejects (a signed `ejected` verdict on its readiness
//! probe) cancels its consumer and takes nothing new, while a serving pod takes every message;
//! told `serving` again it resumes. Unsigned verdicts change nothing.

use anyhow::Result;
use flotilla_testkit::amqp::Publisher;
use flotilla_testkit::rabbitmq::Broker;
use flotilla_testkit::wait;

use crate::support::{shipping, Shipping, WAIT};

/// Sends `verdict` to `pod` on every poll (as the prober repeats it each period) until its
/// `shipping_consuming` gauge reads `consuming`.
async fn tell(pod: &Shipping, verdict: &str, consuming: f64) -> Result<()> {
    wait::poll(
        &format!("{} to follow {verdict}", pod.pod),
        WAIT,
        || async {
            pod.probe(Some(verdict)).await?;
            Ok((pod.metric("shipping_consuming").await? == consuming).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn an_ejected_consumer_takes_nothing_new_and_resumes_when_serving() -> Result<()> {
    let broker = Broker::shared().await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = Shipping::start(shipping(&broker, "shipping-a", dir_a.path()), "shipping-a").await?;
    let b = Shipping::start(shipping(&broker, "shipping-b", dir_b.path()), "shipping-b").await?;
    a.wait_metric("shipping_consuming", 1.0).await?;
    b.wait_metric("shipping_consuming", 1.0).await?;

    // An unsigned `ejected` (any client can send one) is ignored.
    let r = crate::support::http()
        .get(format!("{}/readyz", a.url()))
        .header("Flotilla-Traffic", "ejected")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(a.metric("shipping_consuming").await?, 1.0);

    tell(&a, "ejected", 0.0).await?;
    let publisher = Publisher::connect(&broker).await?;
    for i in 0..10 {
        publisher
            .order_placed(uuid::Uuid::new_v4(), &format!("while-a-ejected-{i}"))
            .await?;
    }
    wait::poll("b to take all ten", WAIT, || async {
        // Keep a ejected, as the prober repeats its verdict.
        a.probe(Some("ejected")).await?;
        Ok((b.metric("shipping_events_acked_total").await? >= 10.0).then_some(()))
    })
    .await?;
    assert_eq!(
        a.metric("shipping_events_consumed_total{type=\"OrderPlaced\"}")
            .await?,
        0.0,
        "an ejected consumer took messages"
    );
    assert_eq!(a.metric("shipping_consuming").await?, 0.0);
    assert_eq!(
        a.metric("flotilla_traffic_verdicts_total{outcome=\"unsigned\"}")
            .await?,
        1.0
    );

    // a serves again and b is ejected: a takes the next messages.
    tell(&a, "serving", 1.0).await?;
    tell(&b, "ejected", 0.0).await?;
    for i in 0..5 {
        publisher
            .order_placed(uuid::Uuid::new_v4(), &format!("after-resume-{i}"))
            .await?;
    }
    wait::poll("a to take all five", WAIT, || async {
        b.probe(Some("ejected")).await?;
        Ok((a.metric("shipping_events_acked_total").await? >= 5.0).then_some(()))
    })
    .await?;
    assert_eq!(b.metric("shipping_events_acked_total").await?, 10.0);
    broker.wait_queue_len("shipping.orders", 0, WAIT).await?;
    Ok(())
}
