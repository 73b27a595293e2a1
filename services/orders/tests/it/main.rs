//! The orders service's integration tests, one binary.
//!
//! - [`end_to_end`]: orders and shipping as processes on one broker: one shipment per order
//!   when an event is published again, and one trace from the gRPC call to the shipment.
//! - [`limits`]: the server's connection limits, in process.
//! - [`outbox`]: OrderPlaced events published to a real RabbitMQ, through broker outages and a
//!   killed process.
//! - [`process`]: the `orders` binary as a process, driven by real tonic clients.
//! - [`traces`]: a client's trace continued by orders and exported over OTLP.

mod end_to_end;
mod limits;
mod outbox;
mod process;
mod traces;
