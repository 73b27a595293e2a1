//! `kubectl flotilla`: a kubectl plugin for Flotilla's MicroServices. It reads the API with the
//! user's kubeconfig and RBAC, like kubectl itself: the service as a tree with each pod's verdict
//! (`get`), the fleet (`list`), why traffic moved or a release was rolled back (`why`), waiting
//! on a release in a pipeline (`status`), and steering a guarded release: `promote`, `abort`,
//! `pause`, `resume`, `retry`, and going back through the revision history (`history`, `undo`);
//! holding traffic on the fallback for maintenance (`failover`, `failback`); and the fleet in a
//! browser (`dashboard`): a local, read-only web page kept current by watches.

pub mod cli;
pub mod commands;
pub mod dashboard;
pub mod error;
pub mod history;
pub mod release;
pub mod render;
pub mod snapshot;
pub mod traffic;
