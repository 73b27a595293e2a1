//! The failover engine's inventory written by hand, for tests that feed the engine directly:
//! services and pods in namespace `t`.

use std::net::IpAddr;

use flotilla_crds::labels;
use flotilla_operator::failover::inventory::{ObjKey, PodInfo, ServiceInfo};
use flotilla_operator::failover::policy::{FailoverPolicy, ProbePolicy};

/// A service whose pods listen on `port`, probed with the default policy; failover-enabled
/// with `fallback` when there is one.
pub fn service(name: &str, port: u16, fallback: Option<&str>) -> ServiceInfo {
    ServiceInfo {
        key: ObjKey::new("t", name),
        uid: None,
        generation: Some(1),
        failover_enabled: fallback.is_some(),
        analysing: false,
        probe: ProbePolicy {
            port,
            ..ProbePolicy::default()
        },
        failover: FailoverPolicy {
            fallback: fallback.map(str::to_owned),
            ..FailoverPolicy::default()
        },
        port_name: "http".into(),
        report_traffic: false,
        scrape_only: false,
        status: None,
        traffic: None,
        conditions: vec![],
    }
}

/// Pod `<svc>-<i>` at `ip`, Ready and in its service's traffic.
pub fn pod(svc: &str, i: usize, ip: IpAddr) -> PodInfo {
    PodInfo {
        key: ObjKey::new("t", format!("{svc}-{i}")),
        service: svc.to_owned(),
        ip: Some(ip),
        ready: true,
        serves: [(labels::serves(svc), "true".to_owned())].into(),
        uid: Some(format!("uid-{svc}-{i}")),
        canary: false,
    }
}
