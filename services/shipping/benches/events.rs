//! End-to-end figures of the shipping consumer: events a second from publish to stored, the
//! p50/p99 latency from publish to handled, and the consumer's CPU seconds per 1,000 events.
//!
//! A real RabbitMQ (`flotilla_testkit::rabbitmq`) and the `shipping` binary as a process with
//! its defaults (prefetch 16, SQLite file). The events are published with lapin directly,
//! persistent and with publisher confirms (up to `BENCH_IN_FLIGHT` unconfirmed), each with its
//! `occurredAt` set at publish time: the consumer is measured, not `orders`' outbox relay
//! (which publishes one event at a time and would bound the rate itself). Latency
//! is the shipment's handling time (`created_at`, milliseconds) minus `occurredAt`; CPU is
//! `utime + stime` of `/proc/<pid>/stat` across the run.
//!
//! ```sh
//! cargo bench -p shipping --bench events       # BENCH_EVENTS (5000), BENCH_IN_FLIGHT (256)
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use flotilla_kit::amqp::{
    Envelope, OrderPlaced, CONTENT_TYPE, EXCHANGE, ORDER_PLACED, ORDER_PLACED_KEY,
};
use flotilla_testkit::process::Builder;
use flotilla_testkit::rabbitmq::Broker;
use flotilla_testkit::wait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) the process `pid` used so far.
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').context("no command in stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_second)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())
}

async fn run() -> Result<()> {
    let events = env_or("BENCH_EVENTS", 5000);
    let in_flight = env_or("BENCH_IN_FLIGHT", 256).max(1);
    let broker = Broker::start().await?;
    let dir = tempfile::tempdir()?;
    let shipping = Builder::new("shipping", env!("CARGO_BIN_EXE_shipping"))
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .listen_env("LISTEN_ADDR")
        .env("AMQP_URL", broker.url())
        .env("RUST_LOG", "warn")
        .env("SHUTDOWN_DELAY_MS", "0")
        .start()
        .await?;
    let pid = shipping.id().context("no pid")?;
    let ticks = clock_ticks();
    let metrics_url = format!("{}/metrics", shipping.url());

    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let cpu_before = cpu_seconds(pid, ticks)?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(in_flight);
    for i in 0..events {
        let id = uuid::Uuid::new_v4();
        let envelope = Envelope {
            id,
            kind: ORDER_PLACED.to_owned(),
            occurred_at: jiff::Timestamp::now().to_string(),
            source: "bench".to_owned(),
            data: serde_json::to_value(OrderPlaced {
                order_id: format!("order-{i}"),
                user_id: "bench-user".to_owned(),
                item: "book".to_owned(),
                quantity: 1,
            })?,
        };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(CONTENT_TYPE.into())
            .with_type(ORDER_PLACED.into())
            .with_message_id(id.to_string().into());
        let confirm = channel
            .basic_publish(
                EXCHANGE.into(),
                ORDER_PLACED_KEY.into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&envelope)?,
                props,
            )
            .await?;
        pending.push(confirm);
        if pending.len() >= in_flight {
            for c in pending.drain(..) {
                ensure!(c.await?.is_ack(), "publish not confirmed");
            }
        }
    }
    for c in pending.drain(..) {
        ensure!(c.await?.is_ack(), "publish not confirmed");
    }
    let published = started.elapsed();

    let http = reqwest::Client::new();
    let target = events as f64;
    wait::poll("every event handled", Duration::from_secs(600), || {
        let http = http.clone();
        let url = metrics_url.clone();
        async move {
            let text = http.get(&url).send().await?.text().await?;
            let acked = text
                .lines()
                .find_map(|l| l.strip_prefix("shipping_events_acked_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            Ok((acked >= target).then_some(()))
        }
    })
    .await?;
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(pid, ticks)? - cpu_before;

    let url = format!("sqlite://{}", dir.path().join("shipping.db").display());
    let db = shipping::Db::connect(&url).await?;
    let shipments = db.list(i64::try_from(events)?).await?;
    if shipments.len() != events {
        bail!("{} shipments for {events} events", shipments.len());
    }
    let mut latencies: Vec<i64> = shipments
        .iter()
        .map(|s| {
            let placed: jiff::Timestamp = s.placed_at.parse()?;
            Ok(s.created_at_ms - placed.as_millisecond())
        })
        .collect::<Result<_>>()?;
    latencies.sort_unstable();
    let first_publish = shipments
        .iter()
        .filter_map(|s| s.placed_at.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .min()
        .unwrap_or_default();
    let last_handled = shipments
        .iter()
        .map(|s| s.created_at_ms)
        .max()
        .unwrap_or_default();
    let span_s = ((last_handled - first_publish).max(1) as f64) / 1e3;

    println!("shipping events bench: {events} OrderPlaced events, publisher confirms, {in_flight} unconfirmed at most");
    println!(
        "  published in {:.2} s ({:.0} events/s)",
        published.as_secs_f64(),
        target / published.as_secs_f64()
    );
    println!(
        "  end to end: {:.0} events/s (first publish to last shipment {span_s:.2} s; all acked after {:.2} s)",
        target / span_s,
        elapsed.as_secs_f64()
    );
    println!(
        "  publish -> handled: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "  consumer CPU: {cpu:.2} s in all, {:.3} s per 1,000 events",
        cpu / target * 1000.0
    );
    db.close().await;
    let exit = shipping.terminate().await?;
    ensure!(exit.success(), "shipping exited {exit}");
    Ok(())
}
