//! The simulated node: built-in controllers (Deployment → ReplicaSet → Pod, EndpointSlices, cluster
//! IPs), a kubelet that runs containers as local processes, and a TCP service proxy.
//!
//! Everything here talks to the API server only over HTTP through a `kube::Client`, as
//! kube-controller-manager, the kubelet and kube-proxy do; it never reaches into the server's
//! state. Pure decision functions live in `controllers::*` and `kubelet::{env,probe,status,...}`;
//! the modules with loops only list, decide and write.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod controllers;
mod events;
pub mod hash;
pub mod images;
pub mod ipam;
pub mod kubelet;
pub mod logs;
mod nodeobj;
pub mod proxy;
mod trigger;

pub use images::{ImageEntry, ImageTable, ImageTableError};
pub use ipam::Ipv4Range;
pub use kubelet::backoff::Backoff;
pub use logs::{read_pod_log, LogError, LogOptions};

/// The `containerID` of a container whose process has `pid`: kubesim's containers are local
/// processes, so the PID names them (a real runtime reports `containerd://<id>`).
pub fn container_id(pid: u32) -> String {
    format!("kubesim://{pid}")
}

/// The process a [`container_id`] names; `None` for any other form.
pub fn container_pid(container_id: &str) -> Option<u32> {
    container_id.strip_prefix("kubesim://")?.parse().ok()
}

/// The PID in a pod's first container's `containerID`; the error names what is missing.
pub fn pod_pid(pod: &k8s_openapi::api::core::v1::Pod) -> Result<u32, String> {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.as_deref())
        .ok_or("the pod has no containerID")?;
    container_pid(id).ok_or_else(|| format!("containerID {id} is not kubesim://<pid>"))
}

/// Name of the one simulated node.
pub const DEFAULT_NODE_NAME: &str = "kubesim-node";

/// How the node runs: where pods live on disk, which executables play which images, address
/// ranges and timing.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node name reported in pod status and the Node object.
    pub node_name: String,
    /// Image → executable table; unmapped images fail to "pull".
    pub images: ImageTable,
    /// Root of per-pod working directories (`pods/`) and container logs (`logs/`).
    pub state_dir: PathBuf,
    /// Pod IPs are allocated here (default 127.2.0.0/16).
    pub pod_range: Ipv4Range,
    /// Service cluster IPs are allocated here (default 127.1.0.0/16).
    pub service_range: Ipv4Range,
    /// The node's own address (`status.hostIP`).
    pub host_ip: Ipv4Addr,
    /// Crash-loop back-off (kubelet defaults: 10s doubling to 300s).
    pub backoff: Backoff,
    /// Full resync period of every loop, in addition to watch-triggered passes (default 5s).
    /// Also bounds how late time-based transitions (minReadySeconds, progress deadlines) are
    /// noticed. Each resync re-lists everything: with 100 idle pods, 1s costs about a fifth of
    /// a core, 5s a few percent.
    pub resync: Duration,
    /// Upper bound on the termination grace period used when the node itself shuts down.
    pub shutdown_grace: Duration,
    /// How often the kubelet relists containers to notice that one exited on its own (a real
    /// kubelet's pod lifecycle event generator relists every 1 s, the default). A crashed
    /// container is reported terminated, made not ready and restarted only at the next relist,
    /// 0 to one period after it died, so it stays in its Service's endpoints that long unless
    /// its readiness probe fails first. Zero notices exits at once. Exits the kubelet causes
    /// (liveness kills, pod deletion) are noticed at once either way.
    pub relist_period: Duration,
}

impl NodeConfig {
    /// Defaults matching a one-node cluster, with pods under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>, images: ImageTable) -> Self {
        Self {
            node_name: DEFAULT_NODE_NAME.into(),
            images,
            state_dir: state_dir.into(),
            pod_range: Ipv4Range::new(Ipv4Addr::new(127, 2, 0, 0), 16),
            service_range: Ipv4Range::new(Ipv4Addr::new(127, 1, 0, 0), 16),
            host_ip: Ipv4Addr::LOCALHOST,
            backoff: Backoff::default(),
            resync: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            relist_period: Duration::from_secs(1),
        }
    }
}

/// Errors starting the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot prepare the node state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
}

/// Shared by every loop of the node.
pub(crate) struct NodeCtx {
    pub client: kube::Client,
    pub config: NodeConfig,
    pub events: events::Recorder,
}

/// A running node. Dropping it kills every pod process at once; `shutdown` stops them gracefully.
pub struct Node {
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    kubelet: Arc<kubelet::Kubelet>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// Starts the controllers, kubelet and proxy against the API server behind `client`.
pub async fn start(client: kube::Client, config: NodeConfig) -> Result<Node, NodeError> {
    for sub in ["pods", "logs"] {
        let path = config.state_dir.join(sub);
        std::fs::create_dir_all(&path).map_err(|source| NodeError::StateDir { path, source })?;
    }
    nodeobj::register(&client, &config).await;
    let events = events::Recorder::new(client.clone(), &config.node_name);
    let ctx = Arc::new(NodeCtx {
        client,
        config,
        events,
    });
    let token = CancellationToken::new();
    let kubelet = Arc::new(kubelet::Kubelet::new(ctx.clone()));
    let tasks = vec![
        tokio::spawn(controllers::run(ctx.clone(), token.clone())),
        tokio::spawn(kubelet.clone().run(token.clone())),
        tokio::spawn(proxy::run(ctx.clone(), token.clone())),
    ];
    Ok(Node {
        token,
        tasks,
        kubelet,
    })
}

impl Node {
    /// Stops all loops, terminates every pod process (SIGTERM, then SIGKILL after the grace
    /// period, capped by `NodeConfig::shutdown_grace`) and waits for them to exit.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        self.kubelet.stop_all().await;
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.token.cancel();
        self.kubelet.kill_all_now();
        for task in &self.tasks {
            task.abort();
        }
    }
}
