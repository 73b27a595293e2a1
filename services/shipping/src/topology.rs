//! The broker objects shipping owns, declared on every connection (declarations are
//! idempotent), and the broker's state as the `broker` readiness check reports it.
//!
//! ```text
//! flotilla.events (topic) --orders.placed--> shipping.orders --(consumer)
//!                                               ^       |  transient failure: republished with
//!                                               |       v  x-shipping-attempts and a TTL
//!        TTL expired: dead-lettered back  <-- shipping.retry
//!                                                       |  poison, or out of attempts
//!                                                       v
//!                      shipping.dead-letter (fanout) --> shipping.dead-letter (queue)
//! ```
//!
//! `shipping.orders` also names `shipping.dead-letter` as its dead-letter exchange, so a message
//! the broker itself rejects (a queue limit an operator adds, say) lands there too.

use std::sync::{Arc, RwLock};

use flotilla_kit::amqp::{EXCHANGE, ORDER_PLACED_KEY};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// The work queue: every `orders.placed` event, shared by all shipping pods.
pub const QUEUE: &str = "shipping.orders";

/// Where failed events wait out their backoff (per-message TTL), then return to [`QUEUE`].
pub const RETRY_QUEUE: &str = "shipping.retry";

/// The dead-letter exchange (fanout) and the queue bound to it, where poison and events out of
/// attempts stay for an operator to inspect.
pub const DEAD_LETTER: &str = "shipping.dead-letter";

fn args(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(
            ShortString::from(*k),
            AMQPValue::LongString(LongString::from(*v)),
        );
    }
    table
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// Declares the exchanges, queues and bindings above.
pub async fn declare(channel: &Channel) -> Result<(), lapin::Error> {
    flotilla_kit::amqp::declare_exchange(channel).await?;
    channel
        .exchange_declare(
            DEAD_LETTER.into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(DEAD_LETTER.into(), durable_queue(), FieldTable::default())
        .await?;
    channel
        .queue_bind(
            DEAD_LETTER.into(),
            DEAD_LETTER.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            QUEUE.into(),
            durable_queue(),
            args(&[("x-dead-letter-exchange", DEAD_LETTER)]),
        )
        .await?;
    channel
        .queue_bind(
            QUEUE.into(),
            EXCHANGE.into(),
            ORDER_PLACED_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Expired messages go back through the default exchange straight to the work queue.
    channel
        .queue_declare(
            RETRY_QUEUE.into(),
            durable_queue(),
            args(&[
                ("x-dead-letter-exchange", ""),
                ("x-dead-letter-routing-key", QUEUE),
            ]),
        )
        .await?;
    Ok(())
}

/// Whether the broker is reachable, for the `broker` readiness check; cheap to clone.
#[derive(Debug, Clone)]
pub struct BrokerState(Arc<RwLock<Result<(), String>>>);

impl Default for BrokerState {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(Err("not connected yet".to_owned()))))
    }
}

impl BrokerState {
    /// Connected, topology declared.
    pub fn up(&self) {
        self.set(Ok(()));
    }

    /// Not connected, and why.
    pub fn down(&self, reason: impl Into<String>) {
        self.set(Err(reason.into()));
    }

    fn set(&self, value: Result<(), String>) {
        match self.0.write() {
            Ok(mut g) => *g = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }

    /// The readiness check's answer.
    pub fn check(&self) -> Result<(), String> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}
