//! The EndpointSlice controller's decision for one Service with a selector: the slices that should
//! exist, from the pods the selector matches. Services without a selector are left to whoever
//! writes their slices (Flotilla does for failover). Pure; no client here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::deployment::controller_ref;
use super::replicaset::pod_ready;
use crate::node::hash::short_suffix;

/// Label naming the Service a slice belongs to (read by the proxy, written by every slice writer).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the writer of a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The value the built-in controller uses; slices with another value are never touched here.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// One write to bring a Service's slices to the desired state.
#[derive(Clone, Debug, PartialEq)]
pub enum SliceAction {
    Create(Box<EndpointSlice>),
    /// Replace an existing slice; carries the resourceVersion it was computed against.
    Replace(Box<EndpointSlice>),
    Delete {
        name: String,
    },
}

/// The selector of a Service this controller manages, if any.
pub fn managed_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

fn target_port(pod: &Pod, target: Option<&IntOrString>, port: i32) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The slices the Service should have, keyed by name. Pods are grouped by their resolved ports.
pub fn desired_slices(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSlice> {
    let Some(selector) = managed_selector(svc) else {
        return Vec::new();
    };
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let status = pod.status.clone().unwrap_or_default();
        let Some(ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = target_port(pod, p.target_port.as_ref(), p.port)?;
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                Some((p.name.clone().unwrap_or_default(), port, proto))
            })
            .collect();
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = pod_ready(pod);
        groups.entry(ports).or_default().push(Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (ready && !terminating)),
                serving: Some(publish_not_ready || ready),
                terminating: Some(terminating),
            }),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if groups.is_empty() {
        // Like the real controller, keep one empty placeholder slice.
        groups.insert(Vec::new(), Vec::new());
    }
    let prefix: String = svc_name.chars().take(56).collect();
    groups
        .into_iter()
        .map(|(ports, mut endpoints)| {
            endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            let key = format!("{svc_name}/{ports:?}");
            EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{prefix}-{}", short_suffix(&key))),
                    namespace: svc.metadata.namespace.clone(),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME_LABEL.to_string(), svc_name.clone()),
                        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                    ])),
                    owner_references: Some(vec![controller_ref("v1", "Service", &svc.metadata)]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints,
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: Some(name),
                            port: Some(port),
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            }
        })
        .collect()
}

fn same_content(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    a.address_type == b.address_type
        && a.endpoints == b.endpoints
        && a.ports.clone().unwrap_or_default() == b.ports.clone().unwrap_or_default()
        && a.metadata.labels == b.metadata.labels
        && a.metadata.owner_references == b.metadata.owner_references
}

/// The writes that turn `existing` (slices of this Service managed by this controller) into the
/// desired slices; nothing when they already match.
pub fn plan(svc: &Service, pods: &[&Pod], existing: &[&EndpointSlice]) -> Vec<SliceAction> {
    let desired = desired_slices(svc, pods);
    let mut actions = Vec::new();
    for want in &desired {
        match existing
            .iter()
            .find(|e| e.metadata.name == want.metadata.name)
        {
            None => actions.push(SliceAction::Create(Box::new(want.clone()))),
            Some(have) if !same_content(have, want) => {
                let mut next = want.clone();
                next.metadata.resource_version = have.metadata.resource_version.clone();
                actions.push(SliceAction::Replace(Box::new(next)));
            }
            Some(_) => {}
        }
    }
    for have in existing {
        if !desired
            .iter()
            .any(|d| d.metadata.name == have.metadata.name)
        {
            actions.push(SliceAction::Delete {
                name: have.metadata.name.clone().unwrap_or_default(),
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };

    fn svc(selector: Option<&str>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("users".into()),
                namespace: Some("ns".into()),
                uid: Some("svc-uid".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: selector.map(|s| BTreeMap::from([("app".to_string(), s.to_string())])),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("web".into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, app: &str, ip: &str, ready: bool, terminating: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
                deletion_timestamp: terminating.then_some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        jiff::Timestamp::UNIX_EPOCH,
                    ),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("web".into()),
                        container_port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    type Row = (String, Option<bool>, Option<bool>, Option<bool>);

    fn conditions(slice: &EndpointSlice) -> Vec<Row> {
        slice
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                (e.addresses[0].clone(), c.ready, c.serving, c.terminating)
            })
            .collect()
    }

    #[test]
    fn matching_pods_become_endpoints_with_named_ports_resolved() {
        // Selected pods appear with their readiness; the named targetPort resolves to the container port.
        let a = pod("a", "users", "127.2.0.2", true, false);
        let b = pod("b", "users", "127.2.0.3", false, false);
        let other = pod("c", "auth", "127.2.0.4", true, false);
        let slices = desired_slices(&svc(Some("users")), &[&a, &b, &other]);
        assert_eq!(slices.len(), 1);
        let ports = slices[0].ports.clone().unwrap_or_default();
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port),
            (Some("http"), Some(8080))
        );
        assert_eq!(
            conditions(&slices[0]),
            vec![
                ("127.2.0.2".into(), Some(true), Some(true), Some(false)),
                ("127.2.0.3".into(), Some(false), Some(false), Some(false)),
            ]
        );
    }

    #[test]
    fn terminating_pods_are_not_ready_but_may_still_serve() {
        // A pod being deleted leaves the ready set while reporting serving/terminating.
        let a = pod("a", "users", "127.2.0.2", true, true);
        let slices = desired_slices(&svc(Some("users")), &[&a]);
        assert_eq!(
            conditions(&slices[0]),
            vec![("127.2.0.2".into(), Some(false), Some(true), Some(true))]
        );
    }

    #[test]
    fn selectorless_services_are_left_alone() {
        // Someone else (Flotilla) writes slices for Services without a selector.
        let a = pod("a", "users", "127.2.0.2", true, false);
        assert!(desired_slices(&svc(None), &[&a]).is_empty());
        assert!(plan(&svc(None), &[&a], &[]).is_empty());
    }

    #[test]
    fn unchanged_slices_are_not_rewritten() {
        // Nothing changed → no write; a change → one replace carrying the old resourceVersion.
        let a = pod("a", "users", "127.2.0.2", true, false);
        let s = svc(Some("users"));
        let mut have = desired_slices(&s, &[&a]).remove(0);
        have.metadata.resource_version = Some("7".into());
        assert!(plan(&s, &[&a], &[&have]).is_empty());
        let a_unready = pod("a", "users", "127.2.0.2", false, false);
        let actions = plan(&s, &[&a_unready], &[&have]);
        assert!(
            matches!(&actions[..], [SliceAction::Replace(x)] if x.metadata.resource_version.as_deref() == Some("7"))
        );
    }
}
