//! The MicroService API (`flotilla.rs/v1alpha1`): the custom resource types, the constants every
//! Flotilla component shares (names, field managers, labels, condition types), and the generated
//! CRD manifest.
//!
//! This crate holds data and schema only: no client, no reconciliation logic.

mod constants;
mod manifest;
mod rollout;
mod spec;
mod status;

pub use constants::*;
pub use manifest::{api_reference_markdown, crd, crd_yaml, REFERENCE_BEGIN, REFERENCE_END};
pub use rollout::{
    FailOn, RolloutEvidence, RolloutPhase, RolloutSpec, RolloutStatus, RolloutStrategy,
};
pub use spec::{
    AutoscalingSpec, FailoverMode, FailoverSpec, GrpcHealthSpec, HealthSpec, MicroService,
    MicroServiceSpec, ServiceSpec, ServiceType, StickyConnections, CONFIG_KEY_PATTERN,
    DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, IMAGE_PATTERN, LABEL_VALUE_PATTERN,
    PORT_NAME_PATTERN,
};
pub use status::{ActiveTarget, FailoverStatus, MicroServiceStatus, PodHealth};
