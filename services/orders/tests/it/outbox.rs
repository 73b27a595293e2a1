//! OrderPlaced events from the `orders` process to a real RabbitMQ (the testkit's broker): what
//! a consumer receives, and that nothing is lost while the broker is down or after orders is
//! killed with events not yet sent. Events are read from the testkit's tap, a durable queue bound
//! to the exchange, as a consumer would.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use flotilla_kit::amqp::{self, OrderPlaced};
use orders::events::relay;
use orders::pb::orders_client::OrdersClient;
use orders::pb::{CreateOrderRequest, Order};
use tonic::transport::Channel as GrpcChannel;

use flotilla_testkit::amqp::{text, Received, Tap};
use flotilla_testkit::otlp::Receiver;
use flotilla_testkit::process::{Builder, Process};
use flotilla_testkit::rabbitmq::Broker;
use flotilla_testkit::wait::poll;

use crate::process::{authed, grpc_serving, key, ADA};

/// Long enough for a broker restart and the relay's longest pause on a loaded machine.
pub(crate) const EVENTS_TIMEOUT: Duration = Duration::from_secs(90);

/// orders in `dir` (its SQLite file `orders.db` there), publishing to `amqp_url` if given,
/// exporting traces to `traces` if given.
pub(crate) async fn start_orders(
    dir: &Path,
    amqp_url: Option<&str>,
    traces: Option<&Receiver>,
) -> Result<Process> {
    let mut builder = Builder::new("orders", env!("CARGO_BIN_EXE_orders"))
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .listen_env("LISTEN_ADDR")
        .env("JWT_PUBLIC_KEYS", key().public_key().to_pem())
        .env("SHUTDOWN_DELAY_MS", "0")
        // Readiness does not wait for the broker: orders is ready with it down.
        .ready(grpc_serving());
    if let Some(url) = amqp_url {
        builder = builder.env("AMQP_URL", url);
    }
    if let Some(receiver) = traces {
        builder = builder
            .env(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("{}/v1/traces", receiver.http_endpoint()),
            )
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000");
    }
    builder.start().await
}

pub(crate) async fn place(orders: &Process, item: &str) -> Result<Order> {
    let channel = GrpcChannel::from_shared(orders.url())?.connect().await?;
    let req = authed(
        CreateOrderRequest {
            item: item.into(),
            quantity: 2,
        },
        ADA,
    )?;
    Ok(OrdersClient::new(channel)
        .create_order(req)
        .await?
        .into_inner())
}

/// The value of a series (`name` or `name{labels}` as printed) on a service's `/metrics`, if it
/// is there.
pub(crate) async fn metric(service: &Process, name: &str) -> Result<Option<f64>> {
    flotilla_testkit::http::metric(&service.url(), name).await
}

/// Waits until orders reports `n` unsent events.
pub(crate) async fn wait_pending(orders: &Process, n: f64) -> Result<()> {
    poll(
        &format!("orders_outbox_pending {n}"),
        EVENTS_TIMEOUT,
        || async { Ok((metric(orders, "orders_outbox_pending").await? == Some(n)).then_some(())) },
    )
    .await
    .with_context(|| format!("orders log:\n{}", orders.log()))
}

/// The order ids the events name.
fn order_ids(events: &[Received]) -> Result<BTreeSet<String>> {
    events.iter().map(|e| Ok(e.placed()?.order_id)).collect()
}

#[tokio::test]
async fn a_placed_order_arrives_as_an_event_in_the_calls_trace() -> Result<()> {
    // The consumer gets the contract's message: the envelope with the order's fields, the
    // event id as message id, the type, JSON, persistent, from orders, and the traceparent of
    // the CreateOrder call, whose span the OTLP receiver shows in the same trace. A commit
    // wakes the relay at once.
    let broker = Broker::shared().await?;
    let events = Tap::bind(&broker).await?;
    let receiver = Receiver::start().await?;
    let dir = tempfile::tempdir()?;
    let orders = start_orders(dir.path(), Some(&broker.url()), Some(&receiver)).await?;

    let order = place(&orders, "tea").await?;
    let got = events.take(1, EVENTS_TIMEOUT).await?;
    let event = &got[0];
    assert_eq!(
        event.placed()?,
        OrderPlaced {
            order_id: order.id.to_string(),
            user_id: ADA.to_owned(),
            item: "tea".into(),
            quantity: 2,
        }
    );
    assert_eq!(event.envelope.kind, amqp::ORDER_PLACED);
    assert_eq!(event.envelope.source, "orders");
    assert_eq!(
        event.message_id(),
        Some(event.envelope.id.to_string().as_str())
    );
    let props = &event.properties;
    assert_eq!(text(props.kind()), Some(amqp::ORDER_PLACED));
    assert_eq!(text(props.content_type()), Some(amqp::CONTENT_TYPE));
    assert_eq!(text(props.app_id()), Some("orders"));
    assert_eq!(*props.delivery_mode(), Some(2));
    let traceparent = event.traceparent().context("no traceparent header")?;
    let trace_id = traceparent
        .split('-')
        .nth(1)
        .context("malformed traceparent")?
        .to_owned();

    // With the relay connected and idle, the commit wakes it: the next event comes well
    // before the relay's own sweep would find it.
    let second = place(&orders, "coffee").await?;
    let woken = events
        .take(1, relay::SWEEP_INTERVAL / 3)
        .await
        .with_context(|| format!("orders log:\n{}", orders.log()))?;
    assert_eq!(woken[0].placed()?.order_id, second.id.to_string());
    assert_ne!(woken[0].message_id(), event.message_id());

    wait_pending(&orders, 0.0).await?;
    assert_eq!(
        metric(&orders, "orders_events_published_total").await?,
        Some(2.0)
    );
    assert_eq!(
        metric(&orders, "orders_event_publish_seconds_count").await?,
        Some(2.0)
    );
    let exit = orders.terminate().await?;
    assert!(exit.success(), "{exit}");
    let call = poll(
        "orders' span of the CreateOrder call",
        Duration::from_secs(10),
        || async {
            Ok(receiver.spans().into_iter().find(|s| {
                s.service == "orders"
                    && s.attribute("method") == "/flotilla.orders.v1.Orders/CreateOrder"
            }))
        },
    )
    .await?;
    assert_eq!(call.trace_id, trace_id);
    Ok(())
}

#[tokio::test]
async fn orders_placed_while_the_broker_is_down_are_published_when_it_is_back() -> Result<()> {
    // The broker goes away under a connected relay; orders keep being accepted and stay
    // ready, their events wait in the outbox (the gauge counts them), and all of them reach
    // the queue once the broker is back, after which nothing is pending.
    let mut broker = Broker::start().await?;
    let events = Tap::bind(&broker).await?;
    let dir = tempfile::tempdir()?;
    let mut orders = start_orders(dir.path(), Some(&broker.url()), None).await?;
    let first = place(&orders, "before").await?;
    assert_eq!(
        order_ids(&events.take(1, EVENTS_TIMEOUT).await?)?,
        BTreeSet::from([first.id.to_string()])
    );
    // The relay marks the event sent once the broker's confirm is in, which may come after
    // the consumer has it: stopping the broker before would leave it pending too.
    wait_pending(&orders, 0.0).await?;
    drop(events);

    broker.stop().await?;
    let mut placed = BTreeSet::new();
    for item in ["one", "two", "three"] {
        placed.insert(place(&orders, item).await?.id.to_string());
    }
    wait_pending(&orders, 3.0).await?;
    orders.wait_ready().await?;

    broker.start_again().await?;
    let events = Tap::bind(&broker).await?;
    let got = events.take(3, EVENTS_TIMEOUT).await?;
    assert_eq!(order_ids(&got)?, placed);
    wait_pending(&orders, 0.0).await?;
    let failures = reqwest::get(format!("{}/metrics", orders.url()))
        .await?
        .text()
        .await?;
    assert!(
        !failures.contains(r#"orders_event_publish_failures_total{reason="connection"} 0"#),
        "the outage was not counted:\n{failures}"
    );
    Ok(())
}

#[tokio::test]
async fn events_of_a_killed_orders_are_published_after_its_restart() -> Result<()> {
    // orders is SIGKILLed with events in its outbox (the broker is down); restarted on the
    // same database it finds them, reports them pending, and publishes every one once the
    // broker is back.
    let mut broker = Broker::start().await?;
    drop(Tap::bind(&broker).await?);
    broker.stop().await?;
    let dir = tempfile::tempdir()?;
    let orders = start_orders(dir.path(), Some(&broker.url()), None).await?;
    let mut placed = BTreeSet::new();
    for item in ["one", "two"] {
        placed.insert(place(&orders, item).await?.id.to_string());
    }
    wait_pending(&orders, 2.0).await?;
    orders.kill().await?;

    let orders = start_orders(dir.path(), Some(&broker.url()), None).await?;
    wait_pending(&orders, 2.0).await?;
    broker.start_again().await?;
    let events = Tap::bind(&broker).await?;
    let got = events.take(2, EVENTS_TIMEOUT).await?;
    assert_eq!(order_ids(&got)?, placed);
    wait_pending(&orders, 0.0).await?;
    Ok(())
}

#[tokio::test]
async fn without_amqp_url_orders_write_no_events() -> Result<()> {
    // Events off: orders works as before, says so once in its log, shows no event metrics,
    // and its database has no outbox rows.
    let dir = tempfile::tempdir()?;
    let orders = start_orders(dir.path(), None, None).await?;
    place(&orders, "tea").await?;
    assert_eq!(metric(&orders, "orders_outbox_pending").await?, None);
    let log = orders.log();
    assert_eq!(log.matches("events off").count(), 1, "{log}");
    let exit = orders.terminate().await?;
    assert!(exit.success(), "{exit}");

    let url = format!("sqlite://{}", dir.path().join("orders.db").display());
    let db = orders::Db::connect(&url).await?;
    assert_eq!(db.list(ADA, 0, 10).await?.len(), 1);
    assert_eq!(db.outbox_counts().await?, (0, 0));
    Ok(())
}
