//! orders and shipping as real processes on one real RabbitMQ, exporting traces to one real
//! OTLP receiver: an order placed over gRPC becomes exactly one shipment, even when orders'
//! relay publishes its event again, and the order's trace runs from orders' CreateOrder span to
//! shipping's handling of the message. The test only calls the services' APIs, holds a lock on
//! orders' database, and reads what the services, the broker and the receiver report.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use serde::Deserialize;
use sqlx::{Connection as _, SqliteConnection};

use flotilla_testkit::amqp::Tap;
use flotilla_testkit::otlp::{ReceivedSpan, Receiver};
use flotilla_testkit::paths::workspace_binary;
use flotilla_testkit::process::{http_ok, Builder, Process};
use flotilla_testkit::rabbitmq::Broker;
use flotilla_testkit::wait::poll;

use crate::outbox::{metric, place, start_orders, wait_pending, EVENTS_TIMEOUT};
use crate::process::ADA;

/// Messages shipping received with a known event type.
const CONSUMED: &str = r#"shipping_events_consumed_total{type="OrderPlaced"}"#;
/// Events shipping stored or recognised as duplicates, and acknowledged.
const ACKED: &str = "shipping_events_acked_total";
/// Events shipping had handled before.
const DUPLICATE: &str = "shipping_events_duplicate_total";

/// A shipment as shipping's read API returns it (the fields these tests compare).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shipment {
    order_id: String,
    event_id: String,
    user_id: String,
    item: String,
    quantity: i64,
    status: String,
}

/// A page of `GET /shipments`.
#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<Shipment>,
}

/// The `shipping` binary on `broker`, its SQLite file in `dir`, exporting traces to
/// `(endpoint, protocol)` if given; started once ready (database migrated, queues declared).
async fn start_shipping(
    broker: &Broker,
    dir: &Path,
    export: Option<(String, &str)>,
) -> Result<Process> {
    let mut builder = Builder::new("shipping", workspace_binary("shipping", "shipping")?)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("SHIPPING_DEV")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .env_remove("OTEL_SERVICE_NAME")
        .listen_env("LISTEN_ADDR")
        .env("AMQP_URL", broker.url())
        .env("SHUTDOWN_DELAY_MS", "0")
        // Back on a restarted broker within a second.
        .env("AMQP_RECONNECT_MAX_MS", "1000")
        .ready(http_ok("/readyz"));
    if let Some((endpoint, protocol)) = export {
        builder = builder
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            // Spans leave on SIGTERM, all at once.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000");
    }
    builder.start().await
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// Every shipment shipping's API lists, by order id.
async fn shipments(shipping: &Process) -> Result<BTreeMap<String, Shipment>> {
    let r = http()?
        .get(format!("{}/shipments?limit=500", shipping.url()))
        .send()
        .await?;
    ensure!(r.status() == 200, "GET /shipments: {}", r.status());
    let page: Page = r.json().await?;
    let listed = page.items.len();
    let by_order: BTreeMap<_, _> = page
        .items
        .into_iter()
        .map(|s| (s.order_id.clone(), s))
        .collect();
    ensure!(
        by_order.len() == listed,
        "an order listed twice: {by_order:?}"
    );
    Ok(by_order)
}

/// Waits until shipping's API serves a shipment for `order`.
async fn wait_shipment(shipping: &Process, order: &str) -> Result<Shipment> {
    poll(
        &format!("a shipment for order {order}"),
        EVENTS_TIMEOUT,
        || async {
            flotilla_testkit::http::get_json_if_found(&format!(
                "{}/shipments/{order}",
                shipping.url()
            ))
            .await
        },
    )
    .await
    .with_context(|| format!("shipping log:\n{}", shipping.log()))
}

/// A counter on shipping's `/metrics`, 0 while absent.
async fn counter(shipping: &Process, series: &str) -> Result<f64> {
    Ok(metric(shipping, series).await?.unwrap_or(0.0))
}

/// Waits until `series` reaches `n`, and returns where it is.
async fn wait_counter(shipping: &Process, series: &str, n: usize) -> Result<f64> {
    let n = n as f64;
    poll(&format!("{series} >= {n}"), EVENTS_TIMEOUT, || async {
        let v = counter(shipping, series).await?;
        Ok((v >= n).then_some(v))
    })
    .await
    .with_context(|| format!("shipping log:\n{}", shipping.log()))
}

/// orders' SQLite write lock, held from another connection: orders still reads its outbox and
/// publishes, but cannot mark an event sent (its update fails after the busy timeout) until
/// the lock is released.
struct WriteLock(SqliteConnection);

impl WriteLock {
    async fn take(db: &Path) -> Result<Self> {
        let mut conn = SqliteConnection::connect(&format!("sqlite://{}", db.display())).await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
        Ok(Self(conn))
    }

    /// The events not marked sent, as orders' database holds them.
    async fn unsent(&mut self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
                .fetch_one(&mut self.0)
                .await?,
        )
    }

    async fn release(mut self) -> Result<()> {
        sqlx::query("ROLLBACK").execute(&mut self.0).await?;
        self.0.close().await?;
        Ok(())
    }
}

#[tokio::test]
async fn each_order_becomes_one_shipment_even_when_its_event_is_published_again() -> Result<()> {
    // Orders placed over gRPC reach shipping, through the outbox, the relay and the broker, as
    // one shipment each, consumed and acknowledged once. Then the relay publishes an event it
    // already published: orders is SIGKILLed after the broker confirmed the message and
    // before the event was marked sent (a write lock on its database holds the mark), and
    // publishes it again, same message id, after its restart. Shipping still has one shipment
    // per order, scheduled by that order's event, and counts every extra copy, and only
    // those, as a duplicate.
    let mut broker = Broker::start().await?;
    // Every copy the relay publishes also lands in this queue, as in shipping's.
    let tap = Tap::bind(&broker).await?;
    let (orders_dir, shipping_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let shipping = start_shipping(&broker, shipping_dir.path(), None).await?;
    let orders = start_orders(orders_dir.path(), Some(&broker.url()), None).await?;

    let mut placed = BTreeMap::new();
    for item in ["tea", "coffee", "cocoa"] {
        let order = place(&orders, item).await?;
        placed.insert(order.id.to_string(), order);
    }
    for id in placed.keys() {
        wait_shipment(&shipping, id).await?;
    }
    assert_eq!(
        shipments(&shipping).await?.into_keys().collect::<Vec<_>>(),
        placed.keys().cloned().collect::<Vec<_>>()
    );
    assert_eq!(wait_counter(&shipping, ACKED, 3).await?, 3.0);
    assert_eq!(counter(&shipping, CONSUMED).await?, 3.0);
    assert_eq!(counter(&shipping, DUPLICATE).await?, 0.0);
    // Every event marked sent (the broker's confirm may reach orders after shipping has the
    // message), so the late order's is the only one the broker's outage leaves unsent.
    wait_pending(&orders, 0.0).await?;
    drop(tap);

    // An order whose event waits in the outbox while the broker is down; the lock is taken
    // before the relay can reach the broker again.
    broker.stop().await?;
    let late = place(&orders, "juice").await?;
    let late_id = late.id.to_string();
    placed.insert(late_id.clone(), late);
    wait_pending(&orders, 1.0).await?;
    let orders_db = orders_dir.path().join("orders.db");
    let mut lock = WriteLock::take(&orders_db).await?;
    broker.start_again().await?;
    // Shipping stored it, so the broker confirmed it; orders cannot have marked it sent.
    let first = wait_shipment(&shipping, &late_id).await?;
    assert_eq!(lock.unsent().await?, 1, "the event was marked sent");
    orders.kill().await?;
    lock.release().await?;
    let orders = start_orders(orders_dir.path(), Some(&broker.url()), None).await?;
    wait_pending(&orders, 0.0).await?;

    // Every copy published, confirmed by the broker, is in the tap now.
    let copies = Tap::bind(&broker).await?.take_all().await?;
    let mut events = BTreeMap::<String, (String, usize)>::new();
    for copy in &copies {
        let id = copy
            .message_id()
            .context("a copy without message id")?
            .to_owned();
        let order = copy.placed()?.order_id;
        let seen = events.entry(id).or_insert((order.clone(), 0));
        assert_eq!(seen.0, order, "one message id for two orders");
        seen.1 += 1;
    }
    let event_of: BTreeMap<_, _> = events
        .iter()
        .map(|(event, (order, _))| (order.clone(), event.clone()))
        .collect();
    assert_eq!(event_of.len(), events.len(), "an order with two event ids");
    assert_eq!(
        event_of.keys().collect::<Vec<_>>(),
        placed.keys().collect::<Vec<_>>()
    );
    let again = events[&event_of[&late_id]].1;
    assert!(again >= 2, "not published again: {events:?}");

    let total = copies.len();
    assert_eq!(
        wait_counter(&shipping, ACKED, total).await?,
        total as f64,
        "{events:?}"
    );
    assert_eq!(counter(&shipping, CONSUMED).await?, total as f64);
    assert_eq!(
        counter(&shipping, DUPLICATE).await?,
        (total - placed.len()) as f64,
        "copies per event: {events:?}"
    );
    let expected: BTreeMap<_, _> = placed
        .iter()
        .map(|(id, order)| {
            let shipment = Shipment {
                order_id: id.clone(),
                event_id: event_of[id].clone(),
                user_id: ADA.to_owned(),
                item: order.item.clone(),
                quantity: order.quantity.into(),
                status: "scheduled".to_owned(),
            };
            (id.clone(), shipment)
        })
        .collect();
    let stored = shipments(&shipping).await?;
    assert_eq!(stored, expected);
    assert_eq!(stored[&late_id], first);
    Ok(())
}

/// `span` and the received spans above it, following `parent_span_id` within its trace.
fn ancestry<'a>(spans: &'a [ReceivedSpan], span: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut line = vec![span];
    while let Some(parent) = line.last().and_then(|child| {
        spans.iter().find(|s| {
            !child.parent_span_id.is_empty()
                && s.trace_id == child.trace_id
                && s.span_id == child.parent_span_id
        })
    }) {
        if line.len() > spans.len() {
            break;
        }
        line.push(parent);
    }
    line
}

fn describe(line: &[&ReceivedSpan]) -> String {
    line.iter()
        .map(|s| {
            format!(
                "{}/{} {} <- {}",
                s.service, s.name, s.span_id, s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn an_order_is_one_trace_from_the_grpc_call_to_its_shipment() -> Result<()> {
    // With orders exporting over OTLP/HTTP and shipping over OTLP/gRPC, shipping's span for
    // an order's message is in the trace of the CreateOrder call that placed the order, and
    // its parents lead back to orders' span of that call: the message's traceparent carries
    // the request's context through the outbox, the relay and the broker.
    let receiver = Receiver::start().await?;
    let broker = Broker::shared().await?;
    let (orders_dir, shipping_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let shipping = start_shipping(
        &broker,
        shipping_dir.path(),
        Some((receiver.grpc_endpoint(), "grpc")),
    )
    .await?;
    let orders = start_orders(orders_dir.path(), Some(&broker.url()), Some(&receiver)).await?;

    let order = place(&orders, "tea").await?;
    let shipment = wait_shipment(&shipping, &order.id.to_string()).await?;
    let mut logs = Vec::new();
    for process in [orders, shipping] {
        // Read at the exit: the log lines of the call and of the handling are all written.
        let exited = process.terminate_with_log().await?;
        assert!(exited.status.success(), "{}", exited.status);
        logs.push(exited.log);
    }

    let (call, handled) = poll(
        "orders' CreateOrder span and shipping's span of its message",
        Duration::from_secs(10),
        || async {
            let spans = receiver.spans();
            let call = spans.iter().find(|s| {
                s.service == "orders"
                    && s.attribute("method") == "/flotilla.orders.v1.Orders/CreateOrder"
            });
            let handled = spans.iter().find(|s| {
                s.service == "shipping" && s.attribute("message_id") == shipment.event_id
            });
            Ok(call.cloned().zip(handled.cloned()))
        },
    )
    .await?;
    assert_eq!((call.protocol, handled.protocol), ("http", "grpc"));
    assert_eq!(handled.name, "shipping.event");
    assert_eq!(handled.trace_id, call.trace_id, "shipping started a trace");
    // orders' log lines of the call carry its trace id (the `grpc` span's `trace_id`).
    assert!(
        logs[0].contains(&call.trace_id),
        "orders' log does not name trace {}:\n{}",
        call.trace_id,
        logs[0]
    );
    let spans = receiver.spans();
    let line = ancestry(&spans, &handled);
    assert!(
        line.iter().any(|s| s.span_id == call.span_id),
        "shipping's span does not lead to CreateOrder {}:\n{}",
        call.span_id,
        describe(&line)
    );
    Ok(())
}
