//! The Service in front of the pods.
//!
//! Without failover it selects the app labels. With failover it selects the traffic membership
//! label `serves.flotilla.rs/<name>: "true"`, which the pod template sets, so Kubernetes keeps
//! adding and dropping pods by itself while the failover engine only flips the label.

use std::collections::BTreeMap;

use flotilla_crds::labels;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{child_meta, selector_labels};
use crate::validate::ValidatedSpec;

/// The Service named like the MicroService, targeting the container port by name.
pub fn build_service(v: &ValidatedSpec) -> Service {
    let s = &v.spec;
    let selector = if s.failover.enabled {
        BTreeMap::from([(labels::serves(&v.name), labels::SERVES_TRUE.to_string())])
    } else {
        selector_labels(&v.name)
    };
    Service {
        metadata: child_meta(v, &v.name),
        spec: Some(ServiceSpec {
            type_: Some(s.service.type_.as_str().to_string()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(s.port_name.clone()),
                port: s.service.port,
                target_port: Some(IntOrString::String(s.port_name.clone())),
                protocol: Some("TCP".into()),
                // Tells gateways and meshes to speak HTTP/2 to the port.
                app_protocol: s.health.grpc.as_ref().map(|_| "grpc".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use flotilla_crds::{MicroServiceSpec, ServiceType};

    use super::*;
    use crate::build::testutil::validated;

    /// Without failover the Service selects the app labels and targets the named port.
    #[test]
    fn plain_service_selects_app_labels() {
        let mut spec = MicroServiceSpec::with_image("x");
        spec.service.type_ = ServiceType::NodePort;
        spec.service.port = 8000;
        let svc = build_service(&validated("auth", spec));
        let s = svc.spec.unwrap_or_default();
        assert_eq!(s.type_.as_deref(), Some("NodePort"));
        assert_eq!(s.selector, Some(selector_labels("auth")));
        let ports = s.ports.unwrap_or_default();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, 8000);
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("http".into()))
        );
        assert_eq!(svc.metadata.name.as_deref(), Some("auth"));
    }

    /// Only a gRPC service marks its port `appProtocol: grpc`.
    #[test]
    fn grpc_port_has_app_protocol() {
        let mut spec = MicroServiceSpec::with_image("x");
        let plain = build_service(&validated("orders", spec.clone()))
            .spec
            .unwrap_or_default();
        assert_eq!(plain.ports.unwrap_or_default()[0].app_protocol, None);
        spec.health.grpc = Some(flotilla_crds::GrpcHealthSpec::default());
        let grpc = build_service(&validated("orders", spec))
            .spec
            .unwrap_or_default();
        assert_eq!(
            grpc.ports.unwrap_or_default()[0].app_protocol.as_deref(),
            Some("grpc")
        );
    }

    /// With failover the Service selects only the membership label.
    #[test]
    fn failover_service_selects_membership_label() {
        let mut spec = MicroServiceSpec::with_image("x");
        spec.failover.enabled = true;
        spec.failover.fallback = Some("auth-standby".into());
        let s = build_service(&validated("auth", spec))
            .spec
            .unwrap_or_default();
        assert_eq!(
            s.selector,
            Some(BTreeMap::from([(
                "serves.flotilla.rs/auth".to_string(),
                "true".to_string()
            )]))
        );
    }
}
