//! The MicroService API (`flotilla.rs/v1alpha1`): the custom resource types, the constants every
//! Flotilla component shares (names, field managers, labels, condition types), and the generated
//! CRD manifest.
//!
//! This crate holds data and schema only: no client, no reconciliation logic.

mod autoscaling;
mod constants;
mod env;
mod failover;
mod health;
mod manifest;
mod patterns;
mod rollout;
mod service;
mod spec;
mod status;
mod traffic_status;

pub use autoscaling::AutoscalingSpec;
pub use constants::*;
pub use env::{env_from_config_map, env_from_secret};
pub use failover::{FailoverMode, FailoverSpec, StickyConnections};
pub use health::{GrpcHealthSpec, HealthSpec};
pub use manifest::{api_reference_markdown, crd, crd_yaml, REFERENCE_BEGIN, REFERENCE_END};
pub use patterns::{
    CONFIG_KEY_PATTERN, DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, IMAGE_PATTERN,
    LABEL_VALUE_PATTERN, PORT_NAME_PATTERN,
};
pub use rollout::{
    FailOn, RolloutEvidence, RolloutPhase, RolloutSpec, RolloutStatus, RolloutStrategy,
};
pub use service::{ServiceSpec, ServiceType};
pub use spec::{MicroService, MicroServiceSpec};
pub use status::{condition, ActiveTarget, FailoverStatus, MicroServiceStatus, PodHealth};
pub use traffic_status::{TrafficFigures, TrafficStatus};
