//! Second stage of the pipeline: pure builders from a [`ValidatedSpec`] to the typed Kubernetes
//! objects the operator applies. One file per child kind; no client, no clock, no randomness, so
//! building twice gives equal objects and `render` prints exactly what the controller applies.

mod configmap;
mod deployment;
mod hpa;
mod meta;
mod service;

pub use configmap::{build_config_map, config_hash, config_map_name};
pub use deployment::{build_deployment, OperatorInputs, CONTAINER_NAME};
pub use hpa::build_hpa;
pub use meta::{common_labels, selector_labels, selector_string};
pub use service::build_service;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};

use crate::validate::ValidatedSpec;

/// Everything one MicroService should own. Optional children are `None` when not wanted, which
/// tells the applier to delete them. The applier destructures this without `..`, so adding a
/// kind here does not compile until it is also applied.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredResources {
    /// The workload.
    pub deployment: Deployment,
    /// The stable address of the pods.
    pub service: Service,
    /// The `config` data, when there is any.
    pub config_map: Option<ConfigMap>,
    /// The autoscaler, when `autoscaling` is set.
    pub hpa: Option<HorizontalPodAutoscaler>,
}

/// Builds every child of the MicroService.
pub fn build(v: &ValidatedSpec, op: &OperatorInputs) -> DesiredResources {
    DesiredResources {
        deployment: build_deployment(v, op),
        service: build_service(v),
        config_map: build_config_map(v),
        hpa: build_hpa(v),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use flotilla_crds::{MicroService, MicroServiceSpec};

    use crate::validate::{validate, ValidatedSpec};

    /// A validated spec for `name` in namespace `shop`, with uid set so owner refs are built.
    pub fn validated(name: &str, spec: MicroServiceSpec) -> ValidatedSpec {
        let mut ms = MicroService::new(name, spec);
        ms.metadata.namespace = Some("shop".into());
        ms.metadata.uid = Some("uid-1".into());
        let lookup = |dep: &str| (dep == "users").then_some(80);
        match validate(&ms, None, &lookup) {
            Ok(v) => v.spec,
            Err(e) => panic!("test spec must be valid: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_crds::MicroServiceSpec;

    use super::testutil::validated;
    use super::*;

    /// Building is deterministic: two builds of the same spec are equal.
    #[test]
    fn building_twice_gives_equal_objects() {
        let mut spec = MicroServiceSpec::with_image("flotilla/auth:0.1.0");
        spec.config = Some([("A".to_string(), "1".to_string())].into());
        let v = validated("auth", spec);
        let op = OperatorInputs {
            verdict_keys: Some("k:AAAA".into()),
        };
        assert_eq!(build(&v, &op), build(&v, &op));
    }

    /// Without config or autoscaling only the Deployment and the Service are wanted.
    #[test]
    fn optional_children_absent_by_default() {
        let d = build(
            &validated("auth", MicroServiceSpec::with_image("x")),
            &OperatorInputs::default(),
        );
        assert!(d.config_map.is_none());
        assert!(d.hpa.is_none());
    }
}
