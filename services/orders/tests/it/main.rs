//! The orders service's integration tests, one binary.
//!
//! - [`limits`]: the server's connection limits, in process.
//! - [`process`]: the `orders` binary as a process, driven by real tonic clients.
//! - [`traces`]: a client's trace continued by orders and exported over OTLP.

mod limits;
mod process;
mod traces;
