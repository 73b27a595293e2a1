//! The `shipping` binary as a process: a missing broker URL stops it naming the variable; it
//! starts on a fresh directory, is ready once database and broker are, and on SIGTERM stops
//! consuming and exits 0.

use anyhow::Result;
use flotilla_testkit::amqp::Publisher;
use flotilla_testkit::process::Builder;
use flotilla_testkit::rabbitmq::Broker;

use serde_json::json;

use crate::support::{shipping, Shipping, WAIT};

#[tokio::test]
async fn a_missing_amqp_url_stops_start_up_naming_it() -> Result<()> {
    // Without AMQP_URL the service could never do its job: it exits at once, saying which
    // variable to set, instead of running unready forever.
    let dir = tempfile::tempdir()?;
    let out = Builder::new("shipping", env!("CARGO_BIN_EXE_shipping"))
        .current_dir(dir.path())
        .env_remove("AMQP_URL")
        .env_remove("SHIPPING_DEV")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .run()
        .await?;
    assert!(!out.status.success());
    assert!(out.log.contains("AMQP_URL"), "log: {}", out.log);
    Ok(())
}

#[tokio::test]
async fn starts_ready_and_stops_cleanly_on_sigterm() -> Result<()> {
    // One command starts it on a fresh directory (its SQLite file created, the queues
    // declared), it reports consuming, and SIGTERM stops consuming, lets the message in flight
    // finish and ends it with code 0.
    let broker = Broker::shared().await?;
    let dir = tempfile::tempdir()?;
    let s = Shipping::start(shipping(&broker, "shipping-0", dir.path()), "shipping-0").await?;
    assert!(
        dir.path().join("shipping.db").exists(),
        "database file not created"
    );
    s.wait_metric("shipping_consuming", 1.0).await?;
    let queues = broker.list_queues(&["name", "durable"]).await?;
    for queue in [
        "shipping.orders\ttrue",
        "shipping.retry\ttrue",
        "shipping.dead-letter\ttrue",
    ] {
        assert!(queues.contains(queue), "{queue} missing: {queues}");
    }
    let (status, body) = s.probe(None).await?;
    assert_eq!(status, 200, "{body}");

    // A message in flight at SIGTERM is finished (stored and acknowledged), not abandoned.
    s.faults(json!({"latencyMs": 1500})).await?;
    let publisher = Publisher::connect(&broker).await?;
    publisher
        .order_placed(uuid::Uuid::new_v4(), "order-at-sigterm")
        .await?;
    s.wait_metric("shipping_events_consumed_total{type=\"OrderPlaced\"}", 1.0)
        .await?;
    let exit = s.process.terminate().await?;
    assert_eq!(exit.code(), Some(0), "{exit}");
    broker.wait_queue_len("shipping.orders", 0, WAIT).await?;
    let url = format!("sqlite://{}", dir.path().join("shipping.db").display());
    let db = shipping::Db::connect(&url).await?;
    assert!(
        db.get("order-at-sigterm").await.is_ok(),
        "in-flight event lost"
    );
    Ok(())
}
