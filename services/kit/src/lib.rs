//! Shared plumbing for Flotilla's sample services (`users`, `auth`).
//!
//! Everything a service needs to behave well under Flotilla and nothing it does not:
//! liveness and readiness endpoints ([`health`]), Prometheus metrics recorded per route
//! template ([`metrics`]), request-scoped structured logs ([`telemetry`]), configuration from
//! flags and the environment ([`config`]), bearer credentials ([`credentials`]), the JWTs
//! auth issues and users and orders verify ([`jwt`]) with auth's published keys ([`jwks`]),
//! database pool setup (`db`, feature `db`), the event contract over AMQP (`amqp`, feature
//! `amqp`), the traffic verdict that closes persistent connections of an ejected pod ([`traffic`]), fault
//! injection for tests and demos ([`faults`]), and a server that drains in-flight requests on
//! SIGTERM ([`server`]). [`app`] ties them into one
//! warp filter around a service's own API routes.
//!
//! This crate holds no business logic and never exits the process; binaries decide that.

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod app;
pub mod config;
pub mod credentials;
#[cfg(feature = "db")]
pub mod db;
pub mod faults;
pub mod health;
pub mod jwks;
pub mod jwt;
pub mod metrics;
pub mod ratelimit;
pub mod readiness_watch;
pub mod reply;
pub mod server;
pub mod telemetry;
pub mod traffic;
pub mod verdict;

pub use app::Kit;
pub use config::{ConfigError, LogFormat, ServiceArgs, ServiceConfig};
pub use faults::{FaultConfig, Faults};
pub use health::Health;
pub use metrics::HttpMetrics;
pub use reply::{tag, RouteTemplate};
pub use traffic::Traffic;
