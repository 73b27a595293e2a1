//! kubesim: a local Kubernetes API server (and, in `node`, a process-based node) for tests and
//! development on machines without a container engine. Not for production.
//!
//! [`Cluster::start`] serves the Kubernetes REST API on a loopback port — HTTPS with
//! authentication and RBAC when [`ClusterConfig::secure`] is set, plain HTTP otherwise — keeps
//! every object in memory and writes a kubeconfig that kubectl and kube-rs can use.

pub mod api;
pub mod auth;
mod builtins;
mod cluster;
pub mod crd;
mod defaults;
mod discovery;
mod disruption;
mod error;
mod events;
pub mod faults;
mod gate;
pub mod node;
mod ns_defaults;
mod openapi;
pub mod patch;
mod proto;
pub mod rbac;
mod registry;
mod request;
pub mod schema;
pub mod selectors;
mod server;
pub mod status;
mod store;
mod table;
pub mod tls;
mod validate;

pub use cluster::{Cluster, ClusterConfig};
pub use error::Error;
pub use faults::{FaultInjector, FaultRule, LatencyRule};
