//! A local cluster for one test process: a kubesim API server, its node (pods run as local
//! processes from the workspace's target directory) and the `flotilla-operator` binary run as a
//! child process against it, exactly as it would run in a pod.
//!
//! Everything binds to loopback. The operator and the pods are killed when the cluster is dropped.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kube::Client;
use kubesim::node::{ImageTable, Ipv4Range, Node, NodeConfig};
use kubesim::{Cluster, ClusterConfig};
use tokio::process::{Child, Command};

use crate::{env, tools, wait};

/// How long the operator may take to start serving on a loaded machine.
const OPERATOR_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The Cargo target directory the running test binary was built into (`target/debug`).
pub fn target_dir() -> PathBuf {
    // Test binaries live in `<target>/<profile>/deps/`.
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
        .unwrap_or_else(|| tools::repo_root().join("target").join("debug"))
}

/// A workspace binary in the target directory, or an error saying how to build it.
pub fn workspace_binary(name: &str, package: &str) -> Result<PathBuf> {
    let path = target_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it with `cargo build -p {package}` (the test command builds the \
             whole workspace first)",
            path.display()
        );
    }
    Ok(path)
}

/// The image table for the node: the workspace's `e2e/kubesim/images.yaml` when present, with the
/// Flotilla images pointed at this target directory in front.
fn image_table() -> Result<ImageTable> {
    let root = tools::repo_root();
    let file = root.join("e2e").join("kubesim").join("images.yaml");
    let mut table = if file.is_file() {
        ImageTable::load(&file, &root)?
    } else {
        ImageTable::default()
    };
    let target = target_dir();
    table.prepend("flotilla/users:*", target.join("users"));
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

/// A free loopback TCP port (bound and released; the operator binds it right after).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The operator as a child process with its log file.
pub struct OperatorProcess {
    child: Child,
    /// Address of its metrics/health server.
    pub metrics_addr: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts `flotilla-operator` with `args` (which must include `--metrics-addr metrics_addr`)
    /// and the environment `envs` against the cluster in `kubeconfig`, logging to `log`, and waits
    /// until `/healthz` answers 200.
    pub async fn start(
        kubeconfig: &Path,
        args: &[String],
        envs: &[(String, String)],
        metrics_addr: &str,
        log: PathBuf,
    ) -> Result<Self> {
        let binary = workspace_binary("flotilla-operator", "flotilla-operator")?;
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&binary)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("FLOTILLA_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut operator = Self {
            child,
            metrics_addr: metrics_addr.to_owned(),
            log,
        };
        operator.wait_serving().await?;
        Ok(operator)
    }

    /// Waits until the operator serves `/healthz`. Tests then wait on what the operator does
    /// (MicroService status, children) rather than on `/readyz`: on kubesim an operator start
    /// sometimes never reports its caches synced although it reconciles, and waiting on that
    /// would hide every other result.
    async fn wait_serving(&mut self) -> Result<()> {
        let url = format!("http://{}/healthz", self.metrics_addr);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let child = &mut self.child;
        let log = self.log.clone();
        let what = format!("the operator's /healthz at {url}");
        let ready = wait::until(&what, OPERATOR_READY_TIMEOUT, || {
            let exited = child.try_wait();
            let request = http.get(&url).send();
            let log = log.clone();
            async move {
                if let Ok(Some(status)) = exited {
                    bail!("operator exited ({status}); log:\n{}", tail(&log, 40));
                }
                Ok(request
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await;
        ready.map_err(|err| err.context(format!("operator log:\n{}", tail(&self.log, 40))))
    }

    /// Sends SIGTERM, as the kubelet does when a pod stops, and waits up to `grace` for the
    /// operator to exit; an operator still running after `grace` is an error (the kubelet would
    /// SIGKILL it mid-drain).
    pub async fn terminate(mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().context("the operator has already exited")?;
        let kill = tools::find("kill")?;
        tools::run_ok(&kill, ["-TERM", &pid.to_string()], None)?;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.context("waiting for the operator"),
            Err(_) => bail!(
                "the operator did not exit within {grace:?} of SIGTERM; log:\n{}",
                tail(&self.log, 40)
            ),
        }
    }

    /// Stops the operator (SIGKILL) and waits for it to exit.
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await.context("stopping the operator")
    }
}

/// The last `lines` lines of the file at `path` ("" when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A kubesim cluster with its node and the operator.
pub struct LocalCluster {
    // Field order is drop order: the operator goes first, then the pods, then the API server.
    operator: tokio::sync::Mutex<Option<OperatorProcess>>,
    node: Option<Node>,
    cluster: Cluster,
    state_dir: tempfile::TempDir,
    _slot: AddressSlot,
}

impl LocalCluster {
    /// Starts the API server and node, installs the CRD, and starts the operator.
    pub async fn start() -> Result<Self> {
        let local = Self::start_bare().await?;
        env::install_crd(&local.client()).await?;
        local.start_operator().await?;
        Ok(local)
    }

    /// Where the operator started by [`LocalCluster::start_operator`] logs (appended across
    /// restarts).
    pub fn operator_log(&self) -> PathBuf {
        self.state_dir.path().join("operator.log")
    }

    /// Starts the operator (all namespaces, no leader election) on a fresh loopback metrics port
    /// and waits until it is ready. Does nothing when it already runs.
    pub async fn start_operator(&self) -> Result<()> {
        let mut slot = self.operator.lock().await;
        if slot.is_some() {
            return Ok(());
        }
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let args: Vec<String> = [
            "run",
            "--metrics-addr",
            &metrics_addr,
            "--log-format",
            "text",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let envs = [("POD_NAMESPACE".to_owned(), "default".to_owned())];
        let operator = OperatorProcess::start(
            self.cluster.kubeconfig_path(),
            &args,
            &envs,
            &metrics_addr,
            self.operator_log(),
        )
        .await?;
        *slot = Some(operator);
        Ok(())
    }

    /// Stops the operator (SIGKILL, like a crash), e.g. to show that traffic keeps flowing
    /// without it; returns whether one was running.
    pub async fn stop_operator(&self) -> Result<bool> {
        let operator = self.operator.lock().await.take();
        match operator {
            Some(operator) => operator.stop().await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Stops and starts the operator again (it resumes from the cluster's state).
    pub async fn restart_operator(&self) -> Result<()> {
        self.stop_operator().await?;
        self.start_operator().await
    }

    /// Starts the API server and node only: no CRD, no operator. Tests that install Flotilla
    /// themselves (e.g. from the rendered chart) use this and [`OperatorProcess`].
    pub async fn start_bare() -> Result<Self> {
        let state_dir = tempfile::Builder::new()
            .prefix("flotilla-e2e-")
            .tempdir()
            .context("creating the node state directory")?;
        let cluster = Cluster::start(ClusterConfig::default())
            .await
            .context("starting kubesim")?;
        let slot = AddressSlot::acquire()?;
        let mut config = NodeConfig::new(state_dir.path().join("node"), image_table()?);
        config.pod_range = slot.pod_range();
        config.service_range = slot.service_range();
        let node = kubesim::node::start(cluster.client(), config)
            .await
            .context("starting the kubesim node")?;
        Ok(Self {
            operator: tokio::sync::Mutex::new(None),
            node: Some(node),
            cluster,
            state_dir,
            _slot: slot,
        })
    }

    /// A client for the API server.
    pub fn client(&self) -> Client {
        self.cluster.client()
    }

    /// The kubeconfig that points at the API server.
    pub fn kubeconfig_path(&self) -> &Path {
        self.cluster.kubeconfig_path()
    }

    /// A directory that lives as long as the cluster, for logs and scratch files.
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// The operator's log and the pods' logs, for a failing test's report.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let log = self.operator_log();
        if log.is_file() {
            out.push_str(&format!(
                "===== operator log (last 80 lines)\n{}\n",
                tail(&log, 80)
            ));
        }
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

    /// Stops the operator, the pods and the API server gracefully.
    pub async fn shutdown(mut self) {
        let _ = self.stop_operator().await;
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
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
