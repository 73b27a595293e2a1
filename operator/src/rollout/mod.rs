//! Guarded rollouts: the stage between build and apply.
//!
//! [`machine`] is the state machine: spec, stored `status.rollout`, what the canary pods show and
//! the time go in; a [`RolloutDecision`] comes out (which template the stable Deployment runs,
//! whether a canary Deployment exists, the next `status.rollout`, an Event). [`evidence`] turns
//! watched Pods and the failover engine's verdicts into that evidence, and [`canary`] builds the
//! `<name>-canary` Deployment from the stable one. No client, no clock there: the caller passes
//! `now`. [`plan`] is the stage itself: it reads the evidence and turns the decision into one
//! [`RolloutPlan`] value, which the apply stage applies and the status stage reports. It writes
//! nothing.

pub mod canary;
pub mod evidence;
pub mod machine;
pub mod plan;

pub use canary::{build_canary, canary_name, canary_replicas, template_revision};
pub use evidence::{CanaryEvidence, CanaryPod, Latency};
pub use machine::{
    degraded, next_step, CanaryAction, RolloutDecision, RolloutEvent, RolloutInputs, StableTemplate,
};
pub use plan::{plan, CanaryChange, RolloutPlan};
