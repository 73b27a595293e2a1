//! The operator's integration tests, one binary. Controller and failover tests run against
//! kubesim, a real HTTP API server, each in its own namespace; the harness is `flotilla-testkit`.
//!
//! - [`support`]: the controller tests' operator configuration and field readers.
//! - [`failover_common`]: test pods, a cluster with real service processes, keep-alive clients.
//! - [`admission_cases`]: the agreement table the admission tests read.
//! - [`notify_receiver`]: a webhook receiver that records requests and answers as scripted.
//!
//! Tests:
//! - [`admission`], [`fuzz_specs`]: the API server, `validate` and `render` agree on every spec.
//! - [`cli`]: the binary's `crd` and `render` commands.
//! - `controller_*`, [`child_conflict`], [`events`]: the reconciler on kubesim.
//! - [`config_rollout`]: rollouts when a referenced Secret or ConfigMap changes.
//! - [`controller_leader`], [`leader_hang`], [`health_stall`]: leadership and a hanging API server.
//! - `failover_*`, [`rollout_cluster`], [`rollout_latency`]: health-aware traffic and guarded
//!   rollouts;
//!   [`failover_traffic`], [`traffic_cluster`]: the request figures, from test pods' metrics and
//!   on a cluster of real service pods;
//!   [`failover_watch`]: the readiness watch on real service processes.
//! - [`notifications`]: Events notified to a webhook receiver, and a failover's notification.
//! - [`traces`]: the binary's spans exported over OTLP to a real receiver.

mod admission_cases;
mod failover_common;
mod notify_receiver;
mod support;

mod admission;
mod child_conflict;
mod cli;
mod config_rollout;
mod controller_autoscaling;
mod controller_create;
mod controller_dependency;
mod controller_faults;
mod controller_leader;
mod controller_noop;
mod controller_policy;
mod controller_status;
mod controller_update;
mod events;
mod failover_clients;
mod failover_cluster;
mod failover_engine;
mod failover_scrape;
mod failover_traffic;
mod failover_watch;
mod fuzz_specs;
mod health_stall;
mod leader_hang;
mod notifications;
mod rollout_cluster;
mod rollout_latency;
mod traces;
mod traffic_cluster;
