//! A local cluster for one test process: a kubesim API server and, when the test runs pods, its
//! node (pods are local processes from the workspace's target directory).
//!
//! Everything binds to loopback. The pods are stopped when the cluster is dropped. Clients come
//! from kubesim's own client and kubeconfig, never from a raw address, so whatever transport
//! kubesim serves (plain HTTP or TLS) keeps working.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use kubesim::node::{ImageTable, Ipv4Range, Node, NodeConfig};
use kubesim::{Cluster, ClusterConfig};

use crate::paths::{repo_root, tail, target_dir};
use crate::wait;

/// Field manager of everything the harness writes.
pub const FIELD_MANAGER: &str = "flotilla-e2e";

/// The image table for the node: the workspace's `e2e/kubesim/images.yaml` when present, with the
/// Flotilla images pointed at this target directory in front.
fn image_table() -> Result<ImageTable> {
    let root = repo_root();
    let file = root.join("e2e").join("kubesim").join("images.yaml");
    let mut table = if file.is_file() {
        ImageTable::load(&file, &root)?
    } else {
        ImageTable::default()
    };
    let target = target_dir();
    let users =
        crate::paths::workspace_binary("users", "users").unwrap_or_else(|_| target.join("users"));
    table.prepend("flotilla/users:*", users);
    table.prepend("flotilla/auth:*", target.join("auth"));
    table.prepend("flotilla/operator:*", target.join("flotilla-operator"));
    Ok(table)
}

/// Port bound on `127.3.<slot>.1` to hold an address slot (see [`AddressSlot`]).
const SLOT_LOCK_PORT: u16 = 47_111;

/// A /24 of pod IPs (`127.2.<n>.0/24`) and of cluster IPs (`127.1.<n>.0/24`) that no other
/// local cluster on this machine uses while this one runs.
///
/// Tests run in parallel processes, each with its own cluster; with shared ranges two clusters
/// would hand the same pod IP to two processes that then fight over the same port. The slot is
/// held by a listening socket on `127.3.<n>.1`, which the kernel releases when the process
/// exits, however it exits.
pub struct AddressSlot {
    /// The slot number `n`.
    pub index: u8,
    _lock: TcpListener,
}

impl AddressSlot {
    /// Takes the first free slot, starting at a per-process offset so that concurrent starts
    /// rarely probe the same slots.
    pub fn acquire() -> Result<Self> {
        let start = (std::process::id() % 250) as u8;
        for step in 0..250u8 {
            // Slots 1..=250; 0 is left to `kubesim up`'s defaults.
            let index = (start.wrapping_add(step) % 250) + 1;
            if let Ok(lock) = TcpListener::bind((Ipv4Addr::new(127, 3, index, 1), SLOT_LOCK_PORT)) {
                return Ok(Self { index, _lock: lock });
            }
        }
        bail!("no free local-cluster address slot (250 clusters running?)")
    }

    /// Pod IP range of the slot.
    pub fn pod_range(&self) -> Ipv4Range {
        Ipv4Range::new(Ipv4Addr::new(127, 2, self.index, 0), 24)
    }

    /// Service cluster IP range of the slot.
    pub fn service_range(&self) -> Ipv4Range {
        Ipv4Range::new(Ipv4Addr::new(127, 1, self.index, 0), 24)
    }
}

/// Adjusts the node's configuration (probe resync, shutdown grace, images) before it starts.
pub type NodeSetup = Box<dyn FnOnce(&mut NodeConfig) + Send>;

/// A kubesim API server, with a node when the test runs pods.
pub struct LocalCluster {
    // Field order is drop order: the pods go first, then the API server.
    node: Option<Node>,
    cluster: Cluster,
    state_dir: tempfile::TempDir,
    _slot: Option<AddressSlot>,
}

impl LocalCluster {
    /// Starts the API server and a node with the default configuration: no CRD, no operator.
    pub async fn start() -> Result<Self> {
        Self::start_with(Some(Box::new(|_| {}))).await
    }

    /// Starts the API server and, when `node` is given, a node configured by it.
    pub async fn start_with(node: Option<NodeSetup>) -> Result<Self> {
        let state_dir = tempfile::Builder::new()
            .prefix("flotilla-e2e-")
            .tempdir()
            .context("creating the cluster's state directory")?;
        let cluster = Cluster::start(ClusterConfig::default())
            .await
            .context("starting kubesim")?;
        let (node, slot) = match node {
            Some(setup) => {
                let slot = AddressSlot::acquire()?;
                let mut config = NodeConfig::new(state_dir.path().join("node"), image_table()?);
                config.pod_range = slot.pod_range();
                config.service_range = slot.service_range();
                setup(&mut config);
                let node = kubesim::node::start(cluster.client(), config)
                    .await
                    .context("starting the kubesim node")?;
                (Some(node), Some(slot))
            }
            None => (None, None),
        };
        Ok(Self {
            node,
            cluster,
            state_dir,
            _slot: slot,
        })
    }

    /// A client for the API server.
    pub fn client(&self) -> Client {
        self.cluster.client()
    }

    /// The kubesim API server (for its fault injection).
    pub fn kubesim(&self) -> &Cluster {
        &self.cluster
    }

    /// The kubeconfig that points at the API server.
    pub fn kubeconfig_path(&self) -> &Path {
        self.cluster.kubeconfig_path()
    }

    /// A directory that lives as long as the cluster, for logs and scratch files.
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// The logs of every pod the node ran (including pods since deleted), for a failing test's
    /// report.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let logs = self.state_dir.path().join("node").join("logs");
        let mut files: Vec<PathBuf> = walk(&logs);
        files.sort();
        for file in files {
            out.push_str(&format!(
                "===== {} (last 30 lines)\n{}\n",
                file.strip_prefix(&logs).unwrap_or(&file).display(),
                tail(&file, 30)
            ));
        }
        out
    }

    /// Stops the pods (SIGTERM, then the node's grace period) and the API server.
    pub async fn shutdown(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

/// A client for the cluster in the kubeconfig file `path` (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    client_from_kubeconfig_with(path, |_| {}).await
}

/// Like [`client_from_kubeconfig`], with the configuration adjusted by `tweak` first.
pub async fn client_from_kubeconfig_with(
    path: &Path,
    tweak: impl FnOnce(&mut Config),
) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    tweak(&mut config);
    Client::try_from(config).context("building the cluster client")
}

/// Installs (or updates) the MicroService CRD from the generated manifest and waits until the
/// API server reports it Established.
pub async fn install_crd(client: &Client) -> Result<()> {
    let crd = flotilla_crds::crd();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(
        flotilla_crds::CRD_NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying the MicroService CRD")?;
    wait::for_object(
        &api,
        flotilla_crds::CRD_NAME,
        wait::DEFAULT_TIMEOUT,
        |crd| {
            let conditions = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .map(Vec::as_slice)
                .unwrap_or_default();
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        },
    )
    .await?;
    Ok(())
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
