//! The failover tests' shared parts, also compiled into the failover benchmarks by path.
//!
//! - [`pods`]: test pods on loopback addresses whose readiness, latency and metrics a test sets.
//! - [`sim`]: a whole cluster on kubesim with real `users` processes as pods.
//! - [`clients`]: clients that keep their connections, as real ones do.
//! - [`inventory`]: the engine's services and pods written by hand.

pub mod clients;
pub mod inventory;
pub mod pods;
pub mod sim;
