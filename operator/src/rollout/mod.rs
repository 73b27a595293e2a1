//! Guarded rollouts.
//!
//! [`decide`] is the state machine: spec, stored `status.rollout`, what the canary pods show and
//! the time go in; a [`RolloutPlan`] comes out (which template the stable Deployment runs, whether
//! a canary Deployment exists, the next `status.rollout`, an Event). [`evidence`] turns watched
//! Pods and the failover engine's verdicts into that evidence, and [`canary`] builds the
//! `<name>-canary` Deployment from the stable one. No client, no clock here: the caller passes
//! `now`. [`step`] is the one part with a client: the reconciler calls it between build and apply
//! and after apply.

pub mod canary;
pub mod decide;
pub mod evidence;
pub mod step;

pub use canary::{build_canary, canary_name, canary_replicas, template_revision};
pub use decide::{
    decide, degraded, CanaryAction, RolloutEvent, RolloutInputs, RolloutPlan, StableTemplate,
};
pub use evidence::{CanaryEvidence, CanaryPod};
