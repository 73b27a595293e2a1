//! The processes under measurement: one RabbitMQ, `shipping` (ready, so its queue is bound before
//! any order is placed) and `orders` publishing to it, each in its own working directory with
//! its default SQLite file. Also the bench's views of them: CPU from `/proc`, shipping's acked
//! counter, shipments through shipping's read API. Nothing here places orders.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use flotilla_kit::jwt::{Signer, SigningKey, AUDIENCE_ORDERS};
use flotilla_testkit::http::metric_value;
use flotilla_testkit::paths::workspace_binary;
use flotilla_testkit::process::{Builder, Process};
use flotilla_testkit::rabbitmq::Broker;
use flotilla_testkit::wait;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Deserialize;

/// How long shipping may take to handle a phase's events after the last order was placed: far
/// above any phase the options make, so only a stuck path fails the bench.
const HANDLED_TIMEOUT: Duration = Duration::from_secs(600);
/// Shipments read at once after a phase (not measured).
const READS_IN_FLIGHT: usize = 8;
/// Lifetime of a client's token: longer than any run, so no client signs twice.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// CPU seconds (user + system) each service used so far.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    pub orders: f64,
    pub shipping: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, before: Cpu) -> Cpu {
        Cpu {
            orders: self.orders - before.orders,
            shipping: self.shipping - before.shipping,
        }
    }
}

/// A shipment as `GET /shipments/{orderId}` returns it (the fields the figures use).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shipment {
    /// The order's creation time (RFC 3339): the event's `occurredAt`, written in the commit.
    pub placed_at: String,
    /// When shipping handled the event (Unix milliseconds).
    pub created_at_ms: i64,
}

/// The broker and both services, running.
pub struct Fleet {
    pub broker: Broker,
    pub orders: Process,
    pub shipping: Process,
    /// The orders binary run, to say which build it was.
    pub orders_bin: PathBuf,
    signer: Signer,
    pids: (u32, u32),
    ticks: f64,
    http: reqwest::Client,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fleet {
    /// Starts the broker, shipping (waiting until `/readyz`: connected, queues declared), then
    /// orders with events on, trusting the public half of a key generated here.
    pub async fn start() -> Result<Self> {
        let broker = Broker::start().await?;
        let (orders_dir, shipping_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let shipping = Builder::new("shipping", env!("CARGO_BIN_EXE_shipping"))
            .current_dir(shipping_dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("SHIPPING_DEV")
            .env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .listen_env("LISTEN_ADDR")
            .env("AMQP_URL", broker.url())
            .env("SHUTDOWN_DELAY_MS", "0")
            .start()
            .await?;
        let key = SigningKey::generate()?;
        let orders_bin = workspace_binary("orders", "orders")?;
        let orders = Builder::new("orders", &orders_bin)
            .current_dir(orders_dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .listen_env("LISTEN_ADDR")
            .env("JWT_PUBLIC_KEYS", key.public_key().to_pem())
            .env("AMQP_URL", broker.url())
            .env("SHUTDOWN_DELAY_MS", "0")
            .start()
            .await?;
        let pids = (
            orders.id().context("orders has no pid")?,
            shipping.id().context("shipping has no pid")?,
        );
        let signer = Signer::new(key, Vec::new(), vec![AUDIENCE_ORDERS.to_owned()], TOKEN_TTL);
        Ok(Self {
            broker,
            orders,
            shipping,
            orders_bin,
            signer,
            pids,
            ticks: clock_ticks(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            _dirs: (orders_dir, shipping_dir),
        })
    }

    /// Which build of orders runs: the name of the target directory it came from.
    pub fn orders_build(&self) -> String {
        profile_of(&self.orders_bin)
    }

    /// Which build of shipping runs.
    pub fn shipping_build(&self) -> String {
        profile_of(Path::new(env!("CARGO_BIN_EXE_shipping")))
    }

    /// A bearer token for `user`, as auth would issue it.
    pub fn token(&self, user: &str) -> Result<String> {
        Ok(self.signer.issue(user)?.0)
    }

    /// Both services' CPU seconds so far.
    pub fn cpu(&self) -> Result<Cpu> {
        Ok(Cpu {
            orders: cpu_seconds(self.pids.0, self.ticks)?,
            shipping: cpu_seconds(self.pids.1, self.ticks)?,
        })
    }

    /// `shipping_events_acked_total`: events stored (or found duplicate) and acknowledged.
    async fn acked(&self) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.shipping.url()))
            .send()
            .await?
            .text()
            .await?;
        Ok(metric_value(&text, "shipping_events_acked_total").unwrap_or(0.0))
    }

    /// Waits until shipping has acknowledged `n` events since it started.
    pub async fn wait_acked(&self, n: usize) -> Result<()> {
        let n = n as f64;
        wait::poll(
            &format!("{n} events acknowledged"),
            HANDLED_TIMEOUT,
            || async { Ok((self.acked().await? >= n).then_some(())) },
        )
        .await
        .with_context(|| format!("shipping log:\n{}", self.shipping.log()))
    }

    /// The shipment of each order, read from shipping's API.
    pub async fn shipments(&self, order_ids: &[String]) -> Result<Vec<Shipment>> {
        futures::stream::iter(order_ids)
            .map(|id| async move {
                let r = self
                    .http
                    .get(format!("{}/shipments/{id}", self.shipping.url()))
                    .send()
                    .await?;
                ensure!(r.status() == 200, "GET /shipments/{id}: {}", r.status());
                Ok(r.json::<Shipment>().await?)
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// SIGTERM to both services, orders first; each must exit 0. Then the broker stops.
    pub async fn stop(mut self) -> Result<()> {
        let orders = self.orders.terminate().await?;
        ensure!(orders.success(), "orders exited {orders}");
        let shipping = self.shipping.terminate().await?;
        ensure!(shipping.success(), "shipping exited {shipping}");
        self.broker.stop().await?;
        Ok(())
    }
}

/// `release` or `debug`: the target directory a binary was built into.
fn profile_of(bin: &Path) -> String {
    bin.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".to_owned())
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

/// Clock ticks a second, the unit of `/proc/<pid>/stat`'s times.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
