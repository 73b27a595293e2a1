//! The relay: the one task that talks to RabbitMQ. It publishes the outbox's unsent rows in
//! order, one message in flight, each confirmed by the broker (publisher confirms) before its
//! row is marked sent. No API call waits for it and readiness does not depend on it.
//!
//! Task layout: one task, one connection, one channel in confirm mode. It runs a step at a time:
//! connect if needed, drain the outbox, then sleep until an order commits
//! ([`super::Outbox::committed`]), [`SWEEP_INTERVAL`] passes, or the connection is lost.
//!
//! - A nack, a closed channel, a lost connection or a confirm that does not come within
//!   [`CONFIRM_TIMEOUT`] leaves the row unsent; the connection is dropped and the relay
//!   reconnects after a pause that doubles from [`BACKOFF_START`] up to [`BACKOFF_MAX`] and
//!   starts over only after a drain went through, so a broker that refuses everything is
//!   retried at most every [`BACKOFF_MAX`], never in a tight loop.
//! - A crash (or a failed update) after the confirm publishes the event again later, with the
//!   same message id: at least once. Several replicas sharing one PostgreSQL database each run a
//!   relay and may publish an event more than once, for the same reason.
//! - One log line per change of state (connected, broker lost, database failing or back); the
//!   attempts in between are logged at debug.
//! - It declares the durable topic exchange itself, so publishing never depends on someone else
//!   having declared it; binding queues is the consumers' business.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use flotilla_kit::amqp;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt as _};

use super::message::{self, Publication};
use super::metrics::{EventMetrics, Failure};
use super::Outbox;
use crate::db::{Db, DbError};

/// How often the relay looks at the outbox without being woken: a safety net for a wake-up it
/// cannot get (a row written by another replica, or one whose publish failed).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// First pause after a failure.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest pause between attempts while the broker is down: how long events may wait after it
/// is back.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long connecting (TCP, AMQP handshake, channel, confirm mode, exchange) may take; an
/// address that swallows packets fails here instead of after the TCP timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish may wait for the broker's confirm before it counts as failed.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// How often an idle relay checks that its connection and channel are still open, besides
/// listening for the connection's error events.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);
/// How long closing the connection may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows read per query; the relay publishes them one by one and then reads again.
const BATCH: i64 = 100;

/// Doubling pauses between attempts, capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    /// The pause to take now; the one after is twice as long, up to [`BACKOFF_MAX`].
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(BACKOFF_MAX);
        pause
    }

    /// After a success: the next failure pauses [`BACKOFF_START`] again.
    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

/// Why the broker did not confirm, for the failure metric and the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", reason.label())]
struct BrokerError {
    reason: Failure,
    detail: String,
}

impl BrokerError {
    fn new(reason: Failure, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What stopped a drain.
enum Stop {
    Broker(BrokerError),
    Database(DbError),
}

/// An open connection with its confirm-mode channel.
struct Link {
    conn: Connection,
    channel: Channel,
    events: Pin<Box<dyn Stream<Item = lapin::Event> + Send>>,
}

impl Link {
    /// Connects, opens a channel in confirm mode and declares the exchange.
    async fn open(url: &str) -> Result<Self, BrokerError> {
        let props = ConnectionProperties::default().with_connection_name(message::SOURCE.into());
        let open = async {
            let conn = Connection::connect(url, props)
                .await
                .map_err(|e| BrokerError::new(Failure::Connection, e.to_string()))?;
            let events = Box::pin(conn.events_listener());
            let link = async {
                let channel = conn.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                amqp::declare_exchange(&channel).await?;
                Ok::<_, lapin::Error>(channel)
            }
            .await;
            match link {
                Ok(channel) => Ok(Self {
                    conn,
                    channel,
                    events,
                }),
                Err(e) => {
                    let error = classify(&conn, &e);
                    let _ = conn.close(0, "".into()).await;
                    Err(error)
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::new(
                    Failure::Connection,
                    format!("not connected within {CONNECT_TIMEOUT:?}"),
                ))
            })
    }

    /// Publishes one message and waits for the broker's confirm.
    async fn publish(&mut self, p: &Publication) -> Result<(), BrokerError> {
        let confirmed = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            self.channel
                .basic_publish(
                    amqp::EXCHANGE.into(),
                    p.routing_key.as_str().into(),
                    // Not mandatory: an event nobody has bound a queue for yet is still
                    // published, not returned.
                    BasicPublishOptions::default(),
                    &p.body,
                    p.properties.clone(),
                )
                .await?
                .await
        })
        .await;
        match confirmed {
            Err(_) => Err(BrokerError::new(
                Failure::Timeout,
                format!("no confirm within {CONFIRM_TIMEOUT:?}"),
            )),
            Ok(Err(e)) => Err(classify(&self.conn, &e)),
            Ok(Ok(Confirmation::Ack(_))) => Ok(()),
            Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::new(
                Failure::Nack,
                "the broker refused the message",
            )),
            Ok(Ok(Confirmation::NotRequested)) => Err(BrokerError::new(
                Failure::Channel,
                "the channel is not in confirm mode",
            )),
        }
    }

    /// Resolves when the connection or the channel is no longer usable.
    async fn lost(&mut self) -> BrokerError {
        let mut check = tokio::time::interval(LIVENESS_INTERVAL);
        loop {
            tokio::select! {
                event = self.events.next() => match event {
                    Some(lapin::Event::Error(e)) => return classify(&self.conn, &e),
                    Some(_) => {}
                    None => return BrokerError::new(Failure::Connection, "the connection ended"),
                },
                _ = check.tick() => {
                    if !self.conn.status().connected() {
                        return BrokerError::new(Failure::Connection, "the connection closed");
                    }
                    if !self.channel.status().connected() {
                        return BrokerError::new(Failure::Channel, "the channel closed");
                    }
                }
            }
        }
    }

    /// Closes the connection politely, if the broker still listens.
    async fn close(self) {
        if self.conn.status().connected() {
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                self.conn.close(200, "orders is stopping".into()),
            )
            .await;
        }
    }
}

/// A client error is a connection failure when the connection is gone, else a channel one.
fn classify(conn: &Connection, e: &lapin::Error) -> BrokerError {
    let reason = if conn.status().connected() {
        Failure::Channel
    } else {
        Failure::Connection
    };
    BrokerError::new(reason, e.to_string())
}

/// Whether the broker was reached, as last logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Unknown,
    Up,
    Down,
}

/// The relay's state between steps.
struct State {
    link: Option<Link>,
    backoff: Backoff,
    broker: Reach,
    database_ok: bool,
}

impl State {
    fn broker_up(&mut self) {
        if self.broker != Reach::Up {
            tracing::info!("event relay connected to the broker, publishing the outbox");
        }
        self.broker = Reach::Up;
    }

    fn broker_down(&mut self, error: &BrokerError, retry_in: Duration) {
        match self.broker {
            Reach::Up => tracing::warn!(
                %error,
                "event relay lost the broker; events wait in the outbox, reconnecting"
            ),
            Reach::Unknown => tracing::warn!(
                %error,
                "event relay cannot reach the broker; events wait in the outbox, retrying"
            ),
            Reach::Down => tracing::debug!(%error, ?retry_in, "broker still unreachable"),
        }
        self.broker = Reach::Down;
    }

    fn database(&mut self, result: Result<(), &DbError>) {
        match (self.database_ok, result) {
            (true, Err(error)) => {
                tracing::warn!(%error, "event relay cannot read or update the outbox; retrying");
            }
            (false, Ok(())) => tracing::info!("event relay reads the outbox again"),
            _ => {}
        }
        self.database_ok = result.is_ok();
    }

    /// Drops the connection (closing it if it still works).
    async fn disconnect(&mut self) {
        if let Some(link) = self.link.take() {
            link.close().await;
        }
    }
}

/// The relay task's configuration and handles.
#[derive(Debug, Clone)]
pub struct Relay {
    db: Db,
    url: String,
    outbox: Outbox,
    metrics: EventMetrics,
}

impl Relay {
    /// A relay publishing `db`'s outbox to the broker at `url` (`amqp://`).
    pub fn new(db: Db, url: String, metrics: EventMetrics) -> Self {
        Self {
            db,
            url,
            outbox: Outbox::default(),
            metrics,
        }
    }

    /// The handle the API rings after each commit.
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    /// Runs until `stop` resolves, then closes the connection. A publish in flight is
    /// abandoned unconfirmed: its row stays unsent and is published after the next start.
    pub async fn run<S: Future<Output = ()>>(self, stop: S) {
        tracing::info!(
            broker = %flotilla_kit::db::redact(&self.url),
            "events on: publishing OrderPlaced through the outbox"
        );
        let mut state = State {
            link: None,
            backoff: Backoff::default(),
            broker: Reach::Unknown,
            database_ok: true,
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                () = self.step(&mut state) => {}
            }
        }
        state.disconnect().await;
        tracing::info!("event relay stopped");
    }

    /// Connect if needed, drain, then wait for a reason to look again.
    async fn step(&self, state: &mut State) {
        self.count_pending(state).await;
        let mut link = match state.link.take() {
            Some(link) => link,
            None => match Link::open(&self.url).await {
                Ok(link) => {
                    state.broker_up();
                    link
                }
                Err(error) => {
                    self.metrics.failed(error.reason);
                    let pause = state.backoff.next_pause();
                    state.broker_down(&error, pause);
                    self.pause(state, pause).await;
                    return;
                }
            },
        };
        let drained = self.drain(&mut link).await;
        state.link = Some(link);
        match drained {
            Ok(()) => {
                state.database(Ok(()));
                state.backoff.reset();
            }
            Err(Stop::Broker(error)) => {
                self.metrics.failed(error.reason);
                state.disconnect().await;
                let pause = state.backoff.next_pause();
                state.broker_down(&error, pause);
                self.pause(state, pause).await;
                return;
            }
            Err(Stop::Database(error)) => {
                state.database(Err(&error));
                let pause = state.backoff.next_pause();
                self.pause(state, pause).await;
                return;
            }
        }
        self.count_pending(state).await;
        let Some(link) = state.link.as_mut() else {
            return;
        };
        let lost = tokio::select! {
            () = self.outbox.woken() => None,
            () = tokio::time::sleep(SWEEP_INTERVAL) => None,
            error = link.lost() => Some(error),
        };
        if let Some(error) = lost {
            state.disconnect().await;
            let pause = state.backoff.next_pause();
            state.broker_down(&error, pause);
            self.pause(state, pause).await;
        }
    }

    /// Publishes every unsent row in order, marking each sent once confirmed.
    async fn drain(&self, link: &mut Link) -> Result<(), Stop> {
        loop {
            let rows = self.db.unsent(BATCH).await.map_err(Stop::Database)?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in &rows {
                link.publish(&message::publication(row))
                    .await
                    .map_err(Stop::Broker)?;
                let now = jiff::Timestamp::now().as_millisecond();
                self.db
                    .mark_sent(row.seq, now)
                    .await
                    .map_err(Stop::Database)?;
                let delay = u64::try_from(now - row.created_at).unwrap_or(0);
                self.metrics.published(Duration::from_millis(delay));
                tracing::debug!(event_id = %row.event_id, seq = row.seq, "event published");
            }
        }
    }

    /// Sets the pending gauge from the database.
    async fn count_pending(&self, state: &mut State) {
        match self.db.outbox_counts().await {
            Ok((unsent, _)) => self.metrics.set_pending(unsent),
            Err(error) => state.database(Err(&error)),
        }
    }

    /// Waits `pause`, keeping the pending gauge current as orders commit meanwhile.
    async fn pause(&self, state: &mut State, pause: Duration) {
        let until = Instant::now() + pause;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                () = self.outbox.woken() => self.count_pending(state).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_start_over_after_a_success() {
        // The broker being down costs at most one attempt per BACKOFF_MAX, and a recovered
        // relay reacts quickly to the next failure.
        let mut backoff = Backoff::default();
        let pauses: Vec<_> = (0..8).map(|_| backoff.next_pause()).collect();
        assert_eq!(pauses[0], BACKOFF_START);
        assert_eq!(pauses[1], BACKOFF_START * 2);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
        assert_eq!(pauses.iter().max(), Some(&BACKOFF_MAX));
        assert_eq!(*pauses.last().expect("pauses"), BACKOFF_MAX);
        backoff.reset();
        assert_eq!(backoff.next_pause(), BACKOFF_START);
    }
}
