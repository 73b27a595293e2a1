//! Starting and stopping a kubesim API server, and the kubeconfig and client that point at it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::Shared;
use crate::error::Error;
use crate::faults::{FaultInjector, Faults};
use crate::store::{EventType, Store, DEFAULT_HISTORY};

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Loopback address to listen on.
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free port.
    pub port: u16,
    /// Where to write the kubeconfig; `None` writes it into a temporary directory that lives
    /// as long as the [`Cluster`].
    pub kubeconfig_path: Option<PathBuf>,
    /// How many changes are kept for watches resuming from a resourceVersion.
    pub watch_history: usize,
    /// The simulated node's state directory; `GET pods/<name>/log` reads container logs
    /// from it (layout in `node::logs`). Without it, log requests answer 404.
    pub node_state_dir: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            kubeconfig_path: None,
            watch_history: DEFAULT_HISTORY,
            node_state_dir: None,
        }
    }
}

/// A running kubesim API server. Dropping it (or [`Cluster::shutdown`]) stops it.
pub struct Cluster {
    url: String,
    kubeconfig: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    shared: Arc<Shared>,
    client: kube::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

/// The namespaces every cluster starts with.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

fn kubeconfig_text(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kubesim
  cluster:
    server: {url}
users:
- name: kubesim
  user: {{}}
contexts:
- name: kubesim
  context:
    cluster: kubesim
    user: kubesim
    namespace: default
current-context: kubesim
"
    )
}

impl Cluster {
    /// Binds the listener, writes the kubeconfig and starts serving.
    pub async fn start(config: ClusterConfig) -> Result<Cluster, Error> {
        if !config.host.is_loopback() {
            return Err(Error::NotLoopback(config.host));
        }
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let url = format!("http://{local}");

        let (tempdir, kubeconfig) = match config.kubeconfig_path {
            Some(p) => (None, p),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("kubesim-")
                    .tempdir()
                    .map_err(Error::TempDir)?;
                let path = dir.path().join("kubeconfig");
                (Some(dir), path)
            }
        };
        if let Some(parent) = kubeconfig.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| Error::Kubeconfig {
                path: kubeconfig.clone(),
                source,
            })?;
        }
        std::fs::write(&kubeconfig, kubeconfig_text(&url)).map_err(|source| Error::Kubeconfig {
            path: kubeconfig.clone(),
            source,
        })?;

        let shared = Arc::new(Shared {
            store: Store::new(config.watch_history),
            faults: Faults::default(),
            node_dir: config.node_state_dir.clone(),
        });
        {
            let mut st = shared.store.lock();
            let key = crate::api::namespaces_key();
            for ns in INITIAL_NAMESPACES {
                let obj = serde_json::json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(),
                        "creationTimestamp": crate::api::now(), "labels": {"kubernetes.io/metadata.name": ns}},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                });
                st.put(&key, "", ns, obj, EventType::Added);
            }
        }

        let uri: http::Uri = url.parse().map_err(|_| Error::Url(url.clone()))?;
        let mut kcfg = kube::Config::new(uri);
        kcfg.default_namespace = "default".to_string();
        let client = kube::Client::try_from(kcfg)?;

        let shutdown = shared.faults.shutdown_token();
        let task = tokio::spawn(crate::server::serve(
            listener,
            shared.clone(),
            local.to_string(),
            shutdown.clone(),
        ));
        Ok(Cluster {
            url,
            kubeconfig,
            _tempdir: tempdir,
            shared,
            client,
            shutdown,
            task: Some(task),
        })
    }

    /// The server URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The kubeconfig written at start (context `kubesim`, namespace `default`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kube-rs client for this server (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A handle to inject faults.
    pub fn faults(&self) -> FaultInjector {
        FaultInjector {
            faults: self.shared.clone(),
        }
    }

    /// Stops serving and closes every connection, including open watches.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
