//! Health-aware traffic: probe every pod of failover-enabled MicroServices, eject failing pods
//! from their Service, and fail a whole service over to its fallback.
//!
//! Pipeline (each stage hands values to the next; only the ends talk to the network):
//! - `prober`: probes each pod's readiness (and optionally metrics) endpoint on its pod IP and
//!   turns results into `pod_health` verdicts. Runs on every replica so a new leader has warm
//!   verdicts.
//! - `decide`: pure; verdicts + policy + clock → desired membership and active target.
//! - `writer`: the one task that applies decisions (pod membership labels, status, Events), only
//!   while leader and only when something differs.
//!
//! Traffic membership: the Service of a failover-enabled MicroService selects on
//! `serves.flotilla.rs/<name>: "true"`, which the pod template sets, so Kubernetes keeps adding
//! and dropping pods on its own when Flotilla is down; Flotilla only flips the label.

pub mod decide;
pub mod engine;
pub mod error_rate;
pub mod inventory;
pub mod metrics;
pub mod pod_health;
pub mod policy;
pub mod probe;
pub mod promtext;
pub mod report;
pub mod spec;
