//! The orders service's integration tests, one binary.
//!
//! - [`limits`]: the server's connection limits, in process.
//! - [`outbox`]: OrderPlaced events published to a real RabbitMQ, through broker outages and a
//!   killed process.
//! - [`process`]: the `orders` binary as a process, driven by real tonic clients.
//! - [`traces`]: a client's trace continued by orders and exported over OTLP.

mod limits;
mod outbox;
mod process;
mod traces;
