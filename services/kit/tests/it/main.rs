//! The kit's integration tests, one binary: the server over real HTTP on loopback.
//!
//! - [`http`]: metrics after known traffic, fault injection and its token guard, request ids,
//!   graceful shutdown.
//! - [`limits`]: the server's resource limits over raw TCP and HTTP/2.
//! - [`shutdown`]: shutdown with idle, early and half-sent connections open.
//! - [`traffic`]: the traffic verdict over real connections.
//! - [`watch`]: the readiness watch over a real connection.

mod http;
mod limits;
mod shutdown;
mod traffic;
mod watch;
