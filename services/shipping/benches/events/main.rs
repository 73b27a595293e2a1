//! End-to-end figures of the order events path: an order committed by `orders` → its
//! `OrderPlaced` event published from the outbox by orders' relay → RabbitMQ → handled by
//! `shipping` (shipment stored, message acknowledged).
//!
//! Everything runs as processes on loopback with their defaults: one real RabbitMQ
//! (`flotilla_testkit::rabbitmq`), the `orders` binary (gRPC API and outbox relay, SQLite, log
//! level info) and the `shipping` binary (prefetch 16, SQLite, log level info). Clients place
//! orders over gRPC, each as its own user with its own token (signed by a key whose public half
//! orders is given) on its own tonic channel, connected before the phase and kept through it.
//! Each run, after a short unmeasured warm-up:
//!
//! - **steady**: `--rate` orders a second for `--steady-secs` from `--steady-clients` clients on
//!   a fixed schedule (open loop; how far behind schedule a call started is printed): the latency
//!   a user sees while the path keeps up.
//! - **burst**: `--burst` orders from `--burst-clients` clients, each placing its next order as
//!   soon as the last is answered: throughput, and the queueing a backlog costs.
//! - **consumer-only ceiling**, labelled apart: `--direct` events published to the same broker
//!   with lapin directly (confirms, 256 unconfirmed at most), bypassing orders, its outbox and
//!   its relay: what shipping alone takes, to tell which side bounds the burst. `0` skips it.
//!
//! A phase ends when shipping has acknowledged all its events (`shipping_events_acked_total`);
//! then every shipment is read from shipping's API (`GET /shipments/{orderId}`). Figures:
//! orders/s committed (orders over the time from the first call to the last reply); events/s
//! handled end to end (events over the time from the first commit to the last handled); latency
//! from commit to handled, `createdAtMs` minus `placedAt` (the order's creation time, written in
//! the transaction that wrote its event: the event's `occurredAt`); CPU (`utime + stime` of
//! `/proc/<pid>/stat` over the phase), shipping's per 1,000 events and orders' (API and relay)
//! per 1,000 orders.
//!
//! Builds: `shipping` is the one `cargo bench` builds (release). `orders` is found as the tests
//! find it (`flotilla_testkit::paths::workspace_binary`): `$FLOTILLA_ORDERS_BIN`, else
//! `target/release/orders`, else the debug build, which `cargo bench` does not rebuild: build
//! it in release first. The first line printed says which build each service is.
//!
//! ```sh
//! cargo build --release -p orders
//! cargo bench -p shipping --bench events                                   # about 2 minutes
//! cargo bench -p shipping --bench events -- --runs 3 --rate 100 --burst 5000
//! ```

mod direct;
mod figures;
mod fleet;
mod load;

use std::future::Future;

use anyhow::{ensure, Result};
use clap::Parser;

use figures::{cpu_line, per_thousand, Handled, Quantiles};
use fleet::{Cpu, Fleet};
use load::Load;

/// What to run; every option also reads a `BENCH_*` variable.
#[derive(Debug, Parser)]
struct Options {
    /// Runs of all phases, on the same processes.
    #[arg(long, env = "BENCH_RUNS", default_value_t = 1)]
    runs: usize,
    /// Steady phase: orders a second offered.
    #[arg(long, env = "BENCH_RATE", default_value_t = 50.0)]
    rate: f64,
    /// Steady phase: seconds.
    #[arg(long, env = "BENCH_STEADY_SECS", default_value_t = 20.0)]
    steady_secs: f64,
    /// Steady phase: clients.
    #[arg(long, env = "BENCH_STEADY_CLIENTS", default_value_t = 8)]
    steady_clients: usize,
    /// Burst phase: orders.
    #[arg(long, env = "BENCH_BURST", default_value_t = 2000)]
    burst: usize,
    /// Burst phase: clients.
    #[arg(long, env = "BENCH_BURST_CLIENTS", default_value_t = 16)]
    burst_clients: usize,
    /// Consumer-only ceiling: events published directly (0: skip).
    #[arg(long, env = "BENCH_DIRECT", default_value_t = 2000)]
    direct: usize,
    /// Unmeasured orders placed before the first run.
    #[arg(long, env = "BENCH_WARMUP", default_value_t = 100)]
    warmup: usize,
    /// Passed by `cargo bench`; nothing to do with it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let options = Options::parse();
    ensure!(options.rate > 0.0, "--rate must be positive");
    tokio::runtime::Runtime::new()?.block_on(run(options))
}

async fn run(o: Options) -> Result<()> {
    let fleet = Fleet::start().await?;
    println!(
        "shipping events bench: order committed (orders over gRPC) -> handled (shipping); \
         orders {} build, shipping {} build, one RabbitMQ, SQLite, loopback",
        fleet.orders_build(),
        fleet.shipping_build()
    );
    let mut acked = 0;
    if o.warmup > 0 {
        let clients = load::clients(&fleet, o.steady_clients).await?;
        measure(&fleet, &mut acked, load::burst(clients, o.warmup)).await?;
    }
    for run in 1..=o.runs {
        println!("run {run} of {}", o.runs);
        let total = (o.rate * o.steady_secs).round() as usize;
        println!(
            "  steady: {:.0} orders/s offered by {} clients for {:.0} s ({total} orders)",
            o.rate, o.steady_clients, o.steady_secs
        );
        let clients = load::clients(&fleet, o.steady_clients).await?;
        let steady = measure(&fleet, &mut acked, load::steady(clients, o.rate, total)).await?;
        print_orders(&steady);
        println!(
            "    (calls started at most {:.1} ms behind schedule)",
            steady.load.behind.as_secs_f64() * 1e3
        );

        println!(
            "  burst: {} orders from {} clients",
            o.burst, o.burst_clients
        );
        let clients = load::clients(&fleet, o.burst_clients).await?;
        let burst = measure(&fleet, &mut acked, load::burst(clients, o.burst)).await?;
        print_orders(&burst);

        if o.direct > 0 {
            println!(
                "  consumer-only ceiling: {} events published with lapin directly, not through \
                 orders (shipping alone)",
                o.direct
            );
            let direct = measure(&fleet, &mut acked, async {
                let (order_ids, elapsed) = direct::publish(&fleet.broker, run, o.direct).await?;
                Ok(Load {
                    order_ids,
                    elapsed,
                    ..Load::default()
                })
            })
            .await?;
            let h = &direct.handled;
            println!(
                "    published:        {:.0} events/s ({:.2} s)",
                h.events as f64 / direct.load.elapsed.as_secs_f64(),
                direct.load.elapsed.as_secs_f64()
            );
            println!(
                "    handled:          {:.0} events/s end to end (first publish to last handled {:.2} s)",
                h.per_second(),
                h.span_s
            );
            println!("    publish->handled: {}", h.latency);
            println!(
                "    CPU: shipping {:.3} s per 1,000 events ({:.2} s)",
                per_thousand(direct.cpu.shipping, h.events),
                direct.cpu.shipping
            );
        }
    }
    fleet.stop().await
}

/// A phase as measured.
struct Measured {
    load: Load,
    handled: Handled,
    cpu: Cpu,
}

/// Runs `place` (a phase's orders or events), waits until shipping has acknowledged them all,
/// and reads their shipments. `acked` counts the events shipping acknowledged before.
async fn measure(
    fleet: &Fleet,
    acked: &mut usize,
    place: impl Future<Output = Result<Load>>,
) -> Result<Measured> {
    let before = fleet.cpu()?;
    let load = place.await?;
    *acked += load.order_ids.len();
    fleet.wait_acked(*acked).await?;
    let cpu = fleet.cpu()? - before;
    let shipments = fleet.shipments(&load.order_ids).await?;
    let handled = Handled::of(&shipments)?;
    Ok(Measured { load, handled, cpu })
}

/// The lines of a phase of orders placed over gRPC.
fn print_orders(m: &Measured) {
    let n = m.load.order_ids.len();
    println!(
        "    committed:        {:.0} orders/s ({n} in {:.2} s; CreateOrder {})",
        n as f64 / m.load.elapsed.as_secs_f64(),
        m.load.elapsed.as_secs_f64(),
        Quantiles::of_durations(&m.load.calls)
    );
    println!(
        "    handled:          {:.0} events/s end to end (first commit to last handled {:.2} s)",
        m.handled.per_second(),
        m.handled.span_s
    );
    if !m.load.failed.is_empty() {
        println!(
            "    failed calls:     {:?} (not retried; orders' log says why)",
            m.load.failed
        );
    }
    println!("    commit->handled:  {}", m.handled.latency);
    println!("    {}", cpu_line(m.cpu, n, m.handled.events));
}
