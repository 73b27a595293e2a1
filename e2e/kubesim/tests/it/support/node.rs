//! Shared set-up for the node tests: a kubesim API server plus a node whose image table maps
//! `kubesim/testpod:*` to the `kubesim-testpod` binary, and helpers that wait on conditions.
//!
//! Each Sim gets its own loopback /24 (derived from the PID and a counter) so tests running in
//! parallel never compete for pod or cluster IPs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, Pod, PodSpec, PodTemplateSpec, Probe, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, ObjectMeta};
use kubesim::node::{self, ImageTable, Ipv4Range, Node, NodeConfig};
use kubesim::{Cluster, ClusterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const IMAGE: &str = "kubesim/testpod:1";
pub const PORT: i32 = 8080;

pub struct Sim {
    pub cluster: Cluster,
    pub node: Option<Node>,
    pub client: kube::Client,
    pub state: tempfile::TempDir,
}

impl Sim {
    pub async fn start() -> anyhow::Result<Sim> {
        let state = tempfile::tempdir()?;
        let config = ClusterConfig {
            node_state_dir: Some(state.path().to_path_buf()),
            ..Default::default()
        };
        let cluster = Cluster::start(config).await?;
        let client = cluster.client();
        let mut images = ImageTable::default();
        images.prepend("kubesim/testpod:*", env!("CARGO_BIN_EXE_kubesim-testpod"));
        // A /24 per Sim: unique across test processes (PID) and across Sims in one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
        let pid = std::process::id();
        let (a, b) = (10 + (pid % 200) as u8, (((pid / 200) % 32) * 8 + n) as u8);
        let mut config = NodeConfig::new(state.path(), images);
        config.pod_range = Ipv4Range::new(Ipv4Addr::new(127, a, b, 0), 25);
        config.service_range = Ipv4Range::new(Ipv4Addr::new(127, a, b, 128), 25);
        config.backoff.base = Duration::from_millis(500);
        config.resync = Duration::from_millis(500);
        config.shutdown_grace = Duration::from_secs(2);
        let node = node::start(client.clone(), config).await?;
        Ok(Sim {
            cluster,
            node: Some(node),
            client,
            state,
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

/// Polls `check` every 200ms until it returns `Some`, failing after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    let needle = format!("KUBESIM_POD_NAME={pod}");
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
