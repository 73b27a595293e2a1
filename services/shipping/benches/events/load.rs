//! The clients: each a user with its own token and its own tonic channel (one HTTP/2 connection
//! to orders, opened before the phase and kept through it, as a real client keeps it), placing
//! orders with `CreateOrder`. Two shapes of load: a steady offered rate and a burst.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use orders::pb::orders_client::OrdersClient;
use orders::pb::CreateOrderRequest;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::Request;

use crate::fleet::Fleet;

/// One client of orders.
pub struct Client {
    api: OrdersClient<Channel>,
    authorization: MetadataValue<Ascii>,
}

impl Client {
    /// A new user's client, connected.
    async fn connect(fleet: &Fleet) -> Result<Self> {
        let user = uuid::Uuid::new_v4().to_string();
        let channel = Channel::from_shared(fleet.orders.url())?.connect().await?;
        Ok(Self {
            api: OrdersClient::new(channel),
            authorization: format!("Bearer {}", fleet.token(&user)?).parse()?,
        })
    }

    /// Places one order: its id and how long the call took, or the gRPC code it failed with (a
    /// real client would see it too; it is counted, not retried, as `CreateOrder` is not
    /// idempotent).
    async fn place(&mut self) -> Result<Result<(String, Duration), tonic::Code>> {
        let mut req = Request::new(CreateOrderRequest {
            item: "book".into(),
            quantity: 1,
        });
        req.metadata_mut()
            .insert("authorization", self.authorization.clone());
        let sent = Instant::now();
        Ok(match self.api.create_order(req).await {
            Ok(order) => Ok((order.into_inner().id.to_string(), sent.elapsed())),
            Err(status) => Err(status.code()),
        })
    }
}

/// `n` connected clients.
pub async fn clients(fleet: &Fleet, n: usize) -> Result<Vec<Client>> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        all.push(Client::connect(fleet).await?);
    }
    Ok(all)
}

/// What the clients saw of a phase.
#[derive(Debug, Default)]
pub struct Load {
    /// The orders placed, by id.
    pub order_ids: Vec<String>,
    /// Each `CreateOrder` call's duration as its client saw it.
    pub calls: Vec<Duration>,
    /// From the first call sent to the last reply.
    pub elapsed: Duration,
    /// How far behind its schedule the latest call started (steady only).
    pub behind: Duration,
    /// Calls that failed, by gRPC code.
    pub failed: BTreeMap<String, usize>,
}

impl Load {
    fn merge(&mut self, other: Load) {
        self.order_ids.extend(other.order_ids);
        self.calls.extend(other.calls);
        self.behind = self.behind.max(other.behind);
        for (code, n) in other.failed {
            *self.failed.entry(code).or_default() += n;
        }
    }

    /// Records one call's outcome.
    fn record(&mut self, outcome: Result<(String, Duration), tonic::Code>) {
        match outcome {
            Ok((id, call)) => {
                self.order_ids.push(id);
                self.calls.push(call);
            }
            Err(code) => *self.failed.entry(format!("{code:?}")).or_default() += 1,
        }
    }
}

/// `total` orders at `rate` a second, call `i` due at `i / rate` s after the start and sent by
/// client `i mod clients`. Open loop: a client still busy when its next call is due sends it as
/// soon as it is free, and the delay is reported, so a saturated orders shows up as lateness
/// instead of silently lowering the offered rate.
pub async fn steady(clients: Vec<Client>, rate: f64, total: usize) -> Result<Load> {
    let count = clients.len();
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, mut client)| {
            tokio::spawn(async move {
                let mut load = Load::default();
                for i in (k..total).step_by(count) {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    load.behind = load
                        .behind
                        .max(Instant::now().saturating_duration_since(due));
                    load.record(client.place().await?);
                }
                anyhow::Ok(load)
            })
        })
        .collect();
    gather(tasks, start).await
}

/// `total` orders, each client placing its next as soon as the last is answered.
pub async fn burst(clients: Vec<Client>, total: usize) -> Result<Load> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut load = Load::default();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    load.record(client.place().await?);
                }
                anyhow::Ok(load)
            })
        })
        .collect();
    gather(tasks, start).await
}

/// Every client's share, once all are done.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Result<Load>>>, start: Instant) -> Result<Load> {
    let mut all = Load::default();
    for task in tasks {
        all.merge(task.await.context("a client panicked")??);
    }
    all.elapsed = start.elapsed();
    Ok(all)
}
