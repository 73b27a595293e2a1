//! The users service's integration tests, one binary.
//!
//! - [`access`]: who may call the API, over real HTTP on loopback.
//! - [`api`]: the API with a real SQLite file (and PostgreSQL when `TEST_POSTGRES_URL` is set).
//! - [`process`]: the `users` binary as a process.
//! - [`signup_flood`]: credential checks keep succeeding during a sign-up flood.
//! - [`stable_ids`]: user ids survive the database.
//! - [`support`]: what the modules share.

mod access;
mod api;
mod process;
mod signup_flood;
mod stable_ids;
mod support;
