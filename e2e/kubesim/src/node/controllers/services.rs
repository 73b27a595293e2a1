//! Cluster IP allocation for Services: kubesim plays the API server's allocator and hands out
//! loopback addresses. Pure; the caller patches `spec.clusterIP`/`clusterIPs`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;

use crate::node::ipam::Ipv4Range;

fn cluster_ip(svc: &Service) -> Option<&str> {
    svc.spec
        .as_ref()?
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

/// Whether the Service still needs an address (not headless, not ExternalName, none assigned).
pub fn needs_cluster_ip(svc: &Service) -> bool {
    let is_external = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    !is_external && cluster_ip(svc).is_none()
}

/// The TCP ports a Service's proxy will listen on.
pub fn tcp_ports(svc: &Service) -> Vec<u16> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect()
}

/// Addresses for every Service that lacks one, avoiding those already assigned and those for
/// which `usable(ip, service)` is false. Returns `(namespace, name, ip)`; stops early if the
/// range is exhausted.
pub fn allocate(
    services: &[Service],
    range: Ipv4Range,
    usable: &dyn Fn(Ipv4Addr, &Service) -> bool,
) -> Vec<(String, String, Ipv4Addr)> {
    let mut used: BTreeSet<Ipv4Addr> = services
        .iter()
        .filter_map(|s| cluster_ip(s)?.parse().ok())
        .collect();
    let mut out = Vec::new();
    for svc in services.iter().filter(|s| needs_cluster_ip(s)) {
        let ip = loop {
            let Some(ip) = range.first_free(&used) else {
                return out;
            };
            used.insert(ip);
            if usable(ip, svc) {
                break ip;
            }
        };
        out.push((
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
            ip,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;
    use kube::api::ObjectMeta;

    fn svc(name: &str, ip: Option<&str>, type_: Option<&str>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: ip.map(Into::into),
                type_: type_.map(Into::into),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn new_services_get_distinct_unused_addresses() {
        // Existing addresses are never handed out twice, unusable ones are skipped; headless and
        // ExternalName Services get none.
        let range = Ipv4Range::new(Ipv4Addr::new(127, 1, 0, 0), 16);
        let services = [
            svc("a", Some("127.1.0.2"), None),
            svc("b", None, None),
            svc("c", Some(""), None),
            svc("d", Some("None"), None),
            svc("e", None, Some("ExternalName")),
        ];
        let not_4 = |ip: Ipv4Addr, _: &Service| ip != Ipv4Addr::new(127, 1, 0, 4);
        let got = allocate(&services, range, &not_4);
        let ips: Vec<(String, Ipv4Addr)> = got.into_iter().map(|(_, n, ip)| (n, ip)).collect();
        assert_eq!(
            ips,
            vec![
                ("b".into(), Ipv4Addr::new(127, 1, 0, 3)),
                ("c".into(), Ipv4Addr::new(127, 1, 0, 5))
            ]
        );
    }
}
