//! OrderPlaced events from the `orders` process to a real RabbitMQ (the testkit's broker): what
//! a consumer receives, and that nothing is lost while the broker is down or after orders is
//! killed with events not yet sent. Events are read from a durable queue this test binds to the
//! exchange, as a consumer would.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use flotilla_kit::amqp::{self, Envelope, OrderPlaced};
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use orders::events::relay;
use orders::pb::orders_client::OrdersClient;
use orders::pb::{CreateOrderRequest, Order};
use tonic::transport::Channel as GrpcChannel;

use flotilla_testkit::otlp::Receiver;
use flotilla_testkit::process::{Builder, Process};
use flotilla_testkit::rabbitmq::Broker;
use flotilla_testkit::wait::poll;

use crate::process::{authed, grpc_serving, key, ADA};

/// Long enough for a broker restart and the relay's longest pause on a loaded machine.
pub(crate) const EVENTS_TIMEOUT: Duration = Duration::from_secs(90);

/// The durable queue the tests read events from.
const QUEUE: &str = "orders-test-events";

/// One event as a consumer receives it.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) message_id: Option<String>,
    kind: Option<String>,
    content_type: Option<String>,
    app_id: Option<String>,
    delivery_mode: Option<u8>,
    traceparent: Option<String>,
    envelope: Envelope,
}

impl Received {
    pub(crate) fn placed(&self) -> Result<OrderPlaced> {
        Ok(serde_json::from_value(self.envelope.data.clone())?)
    }
}

/// A consumer's view of the exchange: a durable queue bound to `orders.placed`.
pub(crate) struct Events {
    channel: Channel,
    _conn: Connection,
}

impl Events {
    /// Declares the exchange (as orders does), the queue and the binding; idempotent, so it
    /// also reconnects after a broker restart.
    pub(crate) async fn bind(broker: &Broker) -> Result<Self> {
        let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        amqp::declare_exchange(&channel).await?;
        channel
            .queue_declare(
                QUEUE.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                QUEUE.into(),
                amqp::EXCHANGE.into(),
                amqp::ORDER_PLACED_KEY.into(),
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
    /// by message id); returns them one per id.
    async fn take(&self, n: usize) -> Result<Vec<Received>> {
        self.take_within(n, EVENTS_TIMEOUT).await
    }

    /// [`Events::take`], within `timeout`.
    async fn take_within(&self, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let got = Arc::new(Mutex::new(Vec::<Received>::new()));
        poll(&format!("{n} events on {QUEUE}"), timeout, || {
            let (channel, got) = (self.channel.clone(), got.clone());
            async move {
                let message = channel
                    .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
                    .await?;
                let mut got = got.lock().expect("lock");
                if let Some(message) = message {
                    let received = received(&message.delivery)?;
                    if !got.iter().any(|r| r.message_id == received.message_id) {
                        got.push(received);
                    }
                }
                Ok((got.len() >= n).then_some(()))
            }
        })
        .await?;
        let mut got = got.lock().expect("lock");
        Ok(std::mem::take(&mut *got))
    }

    /// Takes every message on the queue now, each copy of an event apart.
    pub(crate) async fn take_all(&self) -> Result<Vec<Received>> {
        let mut all = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
            .await?
        {
            all.push(received(&message.delivery)?);
        }
        Ok(all)
    }
}

fn received(delivery: &lapin::message::Delivery) -> Result<Received> {
    let p = &delivery.properties;
    let text = |s: &Option<lapin::types::ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
    Ok(Received {
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
    let text = reqwest::get(format!("{}/metrics", service.url()))
        .await?
        .text()
        .await?;
    Ok(text.lines().find_map(|line| {
        let (series, value) = line.split_once(' ')?;
        (series == name).then(|| value.trim().parse().ok())?
    }))
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
    let broker = Broker::start().await?;
    let events = Events::bind(&broker).await?;
    let receiver = Receiver::start().await?;
    let dir = tempfile::tempdir()?;
    let orders = start_orders(dir.path(), Some(&broker.url()), Some(&receiver)).await?;

    let order = place(&orders, "tea").await?;
    let got = events.take(1).await?;
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
        event.message_id.as_deref(),
        Some(event.envelope.id.to_string().as_str())
    );
    assert_eq!(event.kind.as_deref(), Some(amqp::ORDER_PLACED));
    assert_eq!(event.content_type.as_deref(), Some(amqp::CONTENT_TYPE));
    assert_eq!(event.app_id.as_deref(), Some("orders"));
    assert_eq!(event.delivery_mode, Some(2));
    let traceparent = event.traceparent.clone().context("no traceparent header")?;
    let trace_id = traceparent
        .split('-')
        .nth(1)
        .context("malformed traceparent")?
        .to_owned();

    // With the relay connected and idle, the commit wakes it: the next event comes well
    // before the relay's own sweep would find it.
    let second = place(&orders, "coffee").await?;
    let woken = events
        .take_within(1, relay::SWEEP_INTERVAL / 3)
        .await
        .with_context(|| format!("orders log:\n{}", orders.log()))?;
    assert_eq!(woken[0].placed()?.order_id, second.id.to_string());
    assert_ne!(woken[0].message_id, event.message_id);

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
    let events = Events::bind(&broker).await?;
    let dir = tempfile::tempdir()?;
    let mut orders = start_orders(dir.path(), Some(&broker.url()), None).await?;
    let first = place(&orders, "before").await?;
    assert_eq!(
        order_ids(&events.take(1).await?)?,
        BTreeSet::from([first.id.to_string()])
    );
    drop(events);

    broker.stop().await?;
    let mut placed = BTreeSet::new();
    for item in ["one", "two", "three"] {
        placed.insert(place(&orders, item).await?.id.to_string());
    }
    wait_pending(&orders, 3.0).await?;
    orders.wait_ready().await?;

    broker.start_again().await?;
    let events = Events::bind(&broker).await?;
    let got = events.take(3).await?;
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
    drop(Events::bind(&broker).await?);
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
    let events = Events::bind(&broker).await?;
    let got = events.take(2).await?;
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
