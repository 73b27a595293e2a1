//! kubesim: a local Kubernetes API server (and, in `node`, a process-based node) for tests and
//! development on machines without a container engine. Not for production.
//!
//! [`Cluster::start`] serves the Kubernetes REST API over plain HTTP on a loopback port,
//! keeps every object in memory and writes a kubeconfig that kubectl and kube-rs can use.

pub mod api;
mod builtins;
mod cluster;
pub mod crd;
mod defaults;
mod discovery;
mod error;
mod events;
pub mod faults;
pub mod node;
mod openapi;
pub mod patch;
mod proto;
mod registry;
mod request;
pub mod schema;
pub mod selectors;
mod server;
pub mod status;
mod store;
mod table;
mod validate;

pub use cluster::{Cluster, ClusterConfig};
pub use error::Error;
pub use faults::{FaultInjector, FaultRule, LatencyRule};
