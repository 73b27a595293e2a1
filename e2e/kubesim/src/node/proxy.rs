//! The service proxy: for every Service port, a TCP listener on `<clusterIP>:<port>` that forwards
//! each connection to a ready endpoint of the Service, round-robin.
//!
//! Endpoints come from the Service's EndpointSlices (label `kubernetes.io/service-name`), whoever
//! wrote them. The routing table is rebuilt on every Service/EndpointSlice event and read at accept
//! time, so slice changes apply to the next connection. A Service without ready endpoints refuses:
//! its listener is closed (connection refused, like kube-proxy's REJECT), and a connection that
//! races the close is reset.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::controllers::endpoints::SERVICE_NAME_LABEL;
use super::{trigger, NodeCtx};

/// Listen address → ready backends.
pub type RouteTable = BTreeMap<SocketAddr, Vec<SocketAddr>>;

/// The routing table from Services and EndpointSlices. Pure.
pub fn routes(services: &[Service], slices: &[EndpointSlice]) -> RouteTable {
    let mut table = RouteTable::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let (ns, name) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        );
        let svc_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == ns
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .map(String::as_str)
                        == name
                    && s.address_type == "IPv4"
            })
            .collect();
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Ok(listen_port) = u16::try_from(port.port) else {
                continue;
            };
            let port_name = port.name.clone().unwrap_or_default();
            let mut backends = Vec::new();
            for slice in &svc_slices {
                let Some(target) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.clone().unwrap_or_default() == port_name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                for ep in &slice.endpoints {
                    // A nil `ready` means unknown, which consumers treat as ready.
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for addr in &ep.addresses {
                        if let Ok(a) = addr.parse::<Ipv4Addr>() {
                            backends.push(SocketAddr::from((a, target)));
                        }
                    }
                }
            }
            backends.sort();
            backends.dedup();
            table.insert(SocketAddr::from((ip, listen_port)), backends);
        }
    }
    table
}

/// Runs the proxy until cancelled.
pub(crate) async fn run(ctx: Arc<NodeCtx>, token: CancellationToken) {
    let notify = Arc::new(Notify::new());
    trigger::watch_all::<Service>(&ctx.client, notify.clone(), token.clone());
    trigger::watch_all::<EndpointSlice>(&ctx.client, notify.clone(), token.clone());
    let (tx, rx) = watch::channel(Arc::new(RouteTable::new()));
    let mut listeners: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    notify.notify_one();
    while trigger::next_pass(&notify, ctx.config.resync, &token).await {
        let lp = kube::api::ListParams::default();
        let services = kube::Api::<Service>::all(ctx.client.clone())
            .list(&lp)
            .await;
        let slices = kube::Api::<EndpointSlice>::all(ctx.client.clone())
            .list(&lp)
            .await;
        let (Ok(services), Ok(slices)) = (services, slices) else {
            tracing::debug!("proxy could not list services or endpointslices; retrying");
            continue;
        };
        let table = routes(&services.items, &slices.items);
        tx.send_replace(Arc::new(table.clone()));
        listeners.retain(|addr, task| {
            let keep = table.get(addr).is_some_and(|b| !b.is_empty()) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (addr, backends) in &table {
            if backends.is_empty() || listeners.contains_key(addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listeners.insert(*addr, tokio::spawn(serve(l, *addr, rx.clone())));
                }
                Err(e) => tracing::warn!(%addr, error = %e, "service proxy cannot listen"),
            }
        }
    }
    for (_, task) in listeners {
        task.abort();
    }
}

async fn serve(listener: TcpListener, addr: SocketAddr, table: watch::Receiver<Arc<RouteTable>>) {
    let next = AtomicUsize::new(0);
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let backends = table.borrow().get(&addr).cloned().unwrap_or_default();
        if backends.is_empty() {
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        tokio::spawn(forward(client, backend));
    }
}

async fn forward(mut client: TcpStream, backend: SocketAddr) {
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(backend)).await;
    match connect {
        Ok(Ok(mut upstream)) => {
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        _ => {
            let _ = client.set_zero_linger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use kube::api::ObjectMeta;

    fn slice(svc: &str, port_name: &str, port: i32, eps: &[(&str, Option<bool>)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-x")),
                namespace: Some("ns".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some(port_name.into()),
                port: Some(port),
                ..Default::default()
            }]),
        }
    }

    #[test]
    fn only_ready_endpoints_of_matching_port_names_are_routed() {
        // Not-ready endpoints and slices of other Services never receive traffic.
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("users".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("127.1.0.5".into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        };
        let slices = [
            slice(
                "users",
                "http",
                8080,
                &[
                    ("127.2.0.2", Some(true)),
                    ("127.2.0.3", Some(false)),
                    ("127.2.0.4", None),
                ],
            ),
            slice("auth", "http", 9090, &[("127.2.0.9", Some(true))]),
            slice("users", "metrics", 9100, &[("127.2.0.2", Some(true))]),
        ];
        let table = routes(std::slice::from_ref(&svc), &slices);
        let listen: SocketAddr = "127.1.0.5:80".parse().expect("addr");
        let want: Vec<SocketAddr> = vec![
            "127.2.0.2:8080".parse().expect("a"),
            "127.2.0.4:8080".parse().expect("b"),
        ];
        assert_eq!(table.get(&listen), Some(&want));
        assert_eq!(table.len(), 1);
    }
}
