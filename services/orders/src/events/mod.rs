//! `OrderPlaced` events, published to RabbitMQ through a transactional outbox.
//!
//! - [`message`] (pure): the event an order makes ([`message::order_placed`]) and the AMQP
//!   message an outbox row becomes ([`message::publication`]), per the kit's contract
//!   ([`flotilla_kit::amqp`]).
//! - [`relay`]: the one task that talks to the broker. It publishes unsent outbox rows in order
//!   with publisher confirms and marks each sent once confirmed; it reconnects with a capped
//!   backoff and stops with the server.
//! - [`metrics`]: what the relay counts.
//!
//! The API never talks to the broker: it writes the event in the order's transaction and rings
//! [`Outbox::committed`]. So orders stay available, and ready, while the broker is down; their
//! events wait in the table. Delivery is at least once: a crash between the broker's confirm and
//! the row's update publishes the event again, with the same message id.

pub mod message;
pub mod metrics;
pub mod relay;

use std::sync::Arc;

use tokio::sync::Notify;

pub use self::metrics::EventMetrics;
pub use self::relay::Relay;

/// The API's side of the outbox: present when events are on (`AMQP_URL` set). Cloned into the
/// API; ringing it wakes the relay.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    wake: Arc<Notify>,
}

impl Outbox {
    /// Tells the relay that an event was committed. A wake-up with nobody waiting is kept for
    /// the relay's next wait, so none is lost; several collapse into one.
    pub fn committed(&self) {
        self.wake.notify_one();
    }

    /// Resolves at the next [`Outbox::committed`] (or at once if one is pending).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}
