//! The auth service's integration tests, one binary.
//!
//! - [`fuzz_http`]: property tests of the users and auth HTTP inputs.
//! - [`login`]: auth and users together over real HTTP on loopback.
//! - [`process`]: the `auth` binary as a process.
//! - [`support`]: what the modules share.
//! - [`traces`]: one OpenTelemetry trace across auth and users, exported over OTLP.

mod fuzz_http;
mod login;
mod process;
mod support;
mod traces;
