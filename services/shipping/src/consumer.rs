//! The consumer task: one connection to the broker at a time, reconnected with a capped
//! doubling backoff; on it a confirm-mode channel for republished copies and, while this pod
//! should consume, a consuming channel with a bounded prefetch.
//!
//! A queue consumer gets no traffic through a Service, so it follows Flotilla's traffic
//! verdict itself: while [`flotilla_kit::Traffic`] says the pod is ejected, or the pod drains
//! for shutdown, the consumer is cancelled (`basic.cancel`), deliveries already sent are
//! handled, in-flight ones finish, and the consuming channel is closed (the broker requeues
//! anything still unacknowledged). When the verdict is `serving` again, a new channel
//! consumes. The verdict is read on every change of the kit's traffic state and at least every
//! [`TICK`], because an `ejected` verdict also lapses on its own.
//!
//! Task layout: this task owns the connection and the channels; each delivery is handled in a
//! task of its own (at most `prefetch` at once: the broker sends no more unacknowledged
//! messages), so a slow event never holds the others up. Nothing here decides what to do with
//! a message ([`crate::handler`]) or how long to wait ([`crate::retry`]).

use std::sync::Arc;
use std::time::Duration;

use flotilla_kit::Health;
use futures::StreamExt as _;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::handler::Handler;
use crate::metrics::EventMetrics;
use crate::retry::Reconnect;
use crate::topology::{self, BrokerState, QUEUE};

/// The longest the consumer goes without looking at the traffic verdict and the connection:
/// an `ejected` verdict lapses without a change signal, and a quarter second keeps a pause
/// well inside a probe period.
pub const TICK: Duration = Duration::from_millis(250);

/// How long the consumer waits, after `basic.cancel`, for the broker to confirm the cancel and
/// for deliveries already on their way to arrive.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long in-flight handlers may take to notice a lost connection (their acks fail at once)
/// before the consumer reconnects without them.
const LOST_GRACE: Duration = Duration::from_secs(5);

/// Everything the consumer task needs.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// `AMQP_URL`.
    pub url: String,
    /// `SHIPPING_PREFETCH`.
    pub prefetch: u16,
    /// `AMQP_RECONNECT_MAX_MS`.
    pub reconnect_max: Duration,
    /// The pod's health: draining and the traffic verdict.
    pub health: Health,
    /// What the `broker` readiness check reports.
    pub broker: BrokerState,
    /// Handles each delivery.
    pub handler: Arc<Handler>,
    /// The consumer's metrics.
    pub metrics: EventMetrics,
}

/// How a connection ended.
enum Ended {
    /// The pod drains: stop for good.
    Shutdown,
    /// The connection failed or was lost, and why.
    Lost(String),
}

/// Signals the consumer waits on between deliveries.
struct Signals {
    traffic: watch::Receiver<bool>,
    events: futures::stream::BoxStream<'static, Event>,
}

impl Consumer {
    /// Runs until the pod drains: connects, consumes while wanted, reconnects when the broker
    /// goes away. Returns once every in-flight message is settled and the connection closed.
    pub async fn run(self) {
        let mut reconnect = Reconnect::new(self.reconnect_max);
        let mut traffic = self.health.traffic().subscribe();
        loop {
            if self.health.is_draining() {
                return;
            }
            let ended = self.connection(&mut reconnect, &mut traffic).await;
            self.metrics.consuming.set(0);
            match ended {
                Ended::Shutdown => {
                    tracing::info!("consumer stopped");
                    return;
                }
                Ended::Lost(reason) => {
                    let delay = reconnect.next_delay();
                    tracing::warn!(%reason, retry_in = ?delay, "broker unavailable");
                    self.broker.down(reason);
                    let stop = self.health.clone();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = until_draining(&stop, &mut traffic) => return,
                    }
                }
            }
        }
    }

    /// Whether the pod should take messages now.
    fn wanted(&self) -> bool {
        !self.health.is_draining() && !self.health.traffic().ejected()
    }

    /// One connection's life.
    async fn connection(
        &self,
        reconnect: &mut Reconnect,
        traffic: &mut watch::Receiver<bool>,
    ) -> Ended {
        let redacted = flotilla_kit::db::redact(&self.url);
        let props = ConnectionProperties::default().with_connection_name("shipping".into());
        let conn = match Connection::connect(&self.url, props).await {
            Ok(c) => c,
            Err(e) => return Ended::Lost(format!("cannot connect to {redacted}: {e}")),
        };
        let publisher = match setup(&conn).await {
            Ok(ch) => ch,
            Err(e) => {
                let _ = conn.close(200, "setup failed".into()).await;
                return Ended::Lost(format!("declaring queues on {redacted}: {e}"));
            }
        };
        self.broker.up();
        reconnect.reset();
        tracing::info!(broker = %redacted, "connected to the broker");
        let mut signals = Signals {
            traffic: traffic.clone(),
            events: conn.events_listener().boxed(),
        };
        loop {
            // Paused until this pod should consume.
            loop {
                if self.health.is_draining() {
                    let _ = publisher.close(200, "shutting down".into()).await;
                    let _ = conn.close(200, "shutting down".into()).await;
                    return Ended::Shutdown;
                }
                if !conn.status().connected() {
                    return Ended::Lost("the connection closed".into());
                }
                if self.wanted() {
                    break;
                }
                if let Err(reason) = signals.next().await {
                    return Ended::Lost(reason);
                }
            }
            if let Err(reason) = self.consume(&conn, &publisher, &mut signals).await {
                return Ended::Lost(reason);
            }
        }
    }

    /// Consumes until the pod should stop (`Ok`, channel closed) or the connection fails.
    async fn consume(
        &self,
        conn: &Connection,
        publisher: &Channel,
        signals: &mut Signals,
    ) -> Result<(), String> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| format!("setting the prefetch: {e}"))?;
        let tag = format!("shipping-{}", uuid::Uuid::new_v4());
        let mut consumer = channel
            .basic_consume(
                QUEUE.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consuming from {QUEUE}: {e}"))?;
        self.metrics.consuming.set(1);
        tracing::info!(queue = QUEUE, prefetch = self.prefetch, "consuming");
        let mut inflight = JoinSet::new();
        let spawn = |inflight: &mut JoinSet<()>, delivery| {
            let handler = self.handler.clone();
            let publisher = publisher.clone();
            inflight.spawn(async move { handler.handle(delivery, &publisher).await });
        };
        let ended: Result<(), String> = loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => spawn(&mut inflight, delivery),
                    Some(Err(e)) => break Err(format!("consuming failed: {e}")),
                    None => break Err("the broker cancelled the consumer".into()),
                },
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                signal = signals.next() => {
                    if let Err(reason) = signal {
                        break Err(reason);
                    }
                    if !self.wanted() {
                        break Ok(());
                    }
                }
            }
        };
        if let Err(reason) = ended {
            self.metrics.consuming.set(0);
            // Acks on a dead channel fail at once; the broker redelivers those messages.
            let _ = tokio::time::timeout(LOST_GRACE, join_all(&mut inflight)).await;
            return Err(reason);
        }
        let why = if self.health.is_draining() {
            "draining for shutdown"
        } else {
            "ejected by the traffic verdict"
        };
        tracing::info!(reason = why, "stopping consumption");
        let cancelled = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        // Not consuming from the cancel's confirmation on, when the broker sends this consumer
        // nothing new (a failed cancel has lost the channel): a gauge that fell before it said
        // "nothing new is taken" while a message published then could still arrive.
        self.metrics.consuming.set(0);
        cancelled.map_err(|e| format!("cancelling the consumer: {e}"))?;
        // Deliveries the broker sent before the cancel still arrive: handle them too.
        let _ = tokio::time::timeout(CANCEL_TIMEOUT, async {
            while let Some(Ok(delivery)) = consumer.next().await {
                spawn(&mut inflight, delivery);
            }
        })
        .await;
        let open = inflight.len();
        if open > 0 {
            tracing::info!(in_flight = open, "finishing in-flight messages");
        }
        join_all(&mut inflight).await;
        channel
            .close(200, "consumer paused".into())
            .await
            .map_err(|e| format!("closing the consuming channel: {e}"))?;
        tracing::info!(reason = why, "consumption stopped; nothing new is taken");
        Ok(())
    }
}

impl Signals {
    /// Waits for a change of the traffic state or [`TICK`]; `Err` when the connection reports
    /// an error.
    async fn next(&mut self) -> Result<(), String> {
        tokio::select! {
            changed = self.traffic.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(TICK).await;
                }
                Ok(())
            }
            () = tokio::time::sleep(TICK) => Ok(()),
            event = self.events.next() => match event {
                Some(Event::Error(e)) => Err(format!("connection error: {e}")),
                Some(_) => Ok(()),
                None => Err("the connection closed".into()),
            },
        }
    }
}

/// A channel for republishing, with publisher confirms, after declaring the topology on it.
async fn setup(conn: &Connection) -> Result<Channel, lapin::Error> {
    let channel = conn.create_channel().await?;
    topology::declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

async fn join_all(set: &mut JoinSet<()>) {
    while set.join_next().await.is_some() {}
}

/// Resolves once the pod drains (checked on each traffic change and every [`TICK`]).
async fn until_draining(health: &Health, traffic: &mut watch::Receiver<bool>) {
    while !health.is_draining() {
        tokio::select! {
            _ = traffic.changed() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}
