//! The failover tests' shared parts, also compiled into the failover benchmarks by path.
//!
//! - [`pods`]: test pods on loopback addresses whose readiness, latency and metrics a test sets.
//! - [`sim`]: a whole cluster on kubesim with real `users` processes as pods.
//! - [`clients`]: clients that keep their connections, as real ones do.

pub mod clients;
pub mod pods;
pub mod sim;
