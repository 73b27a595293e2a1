//! A kubesim API server with a node that runs pods as local processes, for the `node_*` tests:
//! its image table maps `kubesim/testpod:*` to the `kubesim-testpod` binary, and helpers read
//! pods, their addresses and their processes.
//!
//! Each Sim holds one of the machine's local-cluster address slots (the same slots the
//! Flotilla harness uses) for its pod and cluster IPs, so clusters running in parallel, in this
//! binary or any other test process, never compete for an IP.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use flotilla_testkit::cluster::AddressSlot;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, Pod, PodSpec, PodTemplateSpec, Probe, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, ObjectMeta};
use kubesim::node::{self, ImageTable, Node, NodeConfig};
use kubesim::{Cluster, ClusterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const IMAGE: &str = "kubesim/testpod:1";
pub const PORT: i32 = 8080;

pub struct Sim {
    pub cluster: Cluster,
    pub node: Option<Node>,
    pub client: kube::Client,
    pub state: tempfile::TempDir,
    /// Held until the cluster and its node are gone.
    _slot: AddressSlot,
}

impl Sim {
    /// A plain-HTTP cluster whose node runs the test pod.
    pub async fn start() -> anyhow::Result<Sim> {
        Self::start_with(false, testpod_images()).await
    }

    /// A cluster whose node runs `images`. `secure`: HTTPS, authentication and RBAC, and the
    /// `kubernetes` Service on the slot's first service IP (which the node never hands out), so
    /// pods reach the API server as in-cluster clients do.
    pub async fn start_with(secure: bool, images: ImageTable) -> anyhow::Result<Sim> {
        Self::start_configured(secure, images, |_| {}).await
    }

    /// Like [`Sim::start_with`], with `setup` adjusting the node's configuration last.
    pub async fn start_configured(
        secure: bool,
        images: ImageTable,
        setup: impl FnOnce(&mut NodeConfig),
    ) -> anyhow::Result<Sim> {
        let slot = AddressSlot::acquire()?;
        let state = tempfile::tempdir()?;
        let service_range = slot.service_range();
        let kubernetes_service_ip = secure.then(|| {
            let [a, b, c, _] = service_range.base.octets();
            Ipv4Addr::new(a, b, c, 1)
        });
        let cluster = super::start_with(ClusterConfig {
            node_state_dir: Some(state.path().to_path_buf()),
            secure,
            kubernetes_service_ip,
            ..ClusterConfig::default()
        })
        .await?;
        let client = cluster.client();
        let mut config = NodeConfig::new(state.path(), images);
        config.pod_range = slot.pod_range();
        config.service_range = service_range;
        // Short restart backoff and probe resync so restarts and readiness changes show within
        // a few seconds; a short grace so stopping pods does not dominate a test's time.
        config.backoff.base = Duration::from_millis(500);
        config.resync = Duration::from_millis(500);
        config.shutdown_grace = Duration::from_secs(2);
        setup(&mut config);
        let node = node::start(client.clone(), config).await?;
        Ok(Sim {
            cluster,
            node: Some(node),
            client,
            state,
            _slot: slot,
        })
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub async fn shutdown(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
        self.cluster.shutdown().await;
    }
}

/// The image table that maps `kubesim/testpod:*` to the test pod binary.
pub fn testpod_images() -> ImageTable {
    let mut images = ImageTable::default();
    images.prepend("kubesim/testpod:*", env!("CARGO_BIN_EXE_kubesim-testpod"));
    images
}

/// The PID in the first container's `containerID` (`kubesim://<pid>`).
pub fn container_pid(pod: &Pod) -> anyhow::Result<u32> {
    node::pod_pid(pod).map_err(anyhow::Error::msg)
}

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(1),
        failure_threshold: Some(1),
        ..Default::default()
    }
}

/// A Deployment of the test pod with readiness and liveness probes.
pub fn deployment(name: &str, replicas: i32, image: &str) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    termination_grace_period_seconds: Some(5),
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some(image.into()),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: PORT,
                            ..Default::default()
                        }]),
                        readiness_probe: Some(http_probe("/readyz")),
                        liveness_probe: Some(Probe {
                            failure_threshold: Some(3),
                            ..http_probe("/healthz")
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// A ClusterIP Service selecting `app=<name>` on port 8080 → the pods' `http` port.
pub fn service(name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 8080,
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pods of app `name` that are not being deleted.
pub async fn live_pods(sim: &Sim, name: &str) -> anyhow::Result<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("app={name}"));
    Ok(sim
        .pods()
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// A minimal HTTP/1.1 GET returning (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http(addr, "GET", path).await
}

pub async fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status line")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        anyhow::Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .context("HTTP request timed out")?
}

pub fn pod_addr(pod: &Pod) -> anyhow::Result<SocketAddr> {
    let ip: Ipv4Addr = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .context("pod has no IP")?
        .parse()?;
    Ok(SocketAddr::from((ip, PORT as u16)))
}

/// PIDs of live processes started for `pod` (found through their `KUBESIM_POD_NAME`).
pub fn processes_of(pod: &str) -> Vec<u32> {
    processes_with_env(&format!("KUBESIM_POD_NAME={pod}"))
}

/// The live processes whose environment holds `needle` (`NAME=value`).
pub fn processes_with_env(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            !zombie
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                    .unwrap_or(false)
        })
        .collect()
}
