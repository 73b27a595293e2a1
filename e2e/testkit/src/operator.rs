//! The operator under test, however it runs: in-process (the operator crate's own tests hand in
//! a closure around `flotilla_operator::run`, so this crate never depends on the operator and
//! its types are not built twice) or as the `flotilla-operator` binary in a child process, as
//! it runs in a pod.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use futures::FutureExt;
use kube::Client;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::paths::{tail, workspace_binary};
use crate::{http, wait};

/// How long the operator may take to start serving, or to stop, on a loaded machine.
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(60);

/// A running operator.
pub trait RunningOperator: Send + Sync {
    /// Stops it: an in-process operator is asked to shut down and its result returned; a child
    /// process is killed (SIGKILL, like a crash).
    fn stop(self: Box<Self>) -> BoxFuture<'static, Result<()>>;

    /// Its log file, when it writes one (a child process); read into a failing test's report.
    fn log(&self) -> Option<&Path> {
        None
    }
}

/// What an operator is started against.
pub struct Target<'a> {
    /// Client for the cluster's API server.
    pub client: Client,
    /// Kubeconfig of the cluster (for a child process).
    pub kubeconfig: &'a Path,
    /// A directory that outlives the operator, for its log.
    pub state_dir: &'a Path,
}

/// Starts an operator against a cluster; the harness calls it on start and on every restart.
pub type Launcher = Arc<
    dyn for<'a> Fn(Target<'a>) -> BoxFuture<'a, Result<Box<dyn RunningOperator>>> + Send + Sync,
>;

/// The shutdown signal handed to an in-process operator: resolves when the test stops it (or
/// drops its handle).
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// An operator running as a task of the test process.
pub struct InProcess {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<()>>,
}

impl InProcess {
    /// Spawns `run(client, shutdown)`, e.g. `flotilla_operator::run(client, config, shutdown)`.
    pub fn spawn<F, Fut, E>(client: Client, run: F) -> Self
    where
        F: FnOnce(Client, Shutdown) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (stop, rx) = oneshot::channel();
        let running = run(client, Shutdown(rx));
        let task = tokio::spawn(async move { running.await.map_err(anyhow::Error::new) });
        Self { stop, task }
    }

    /// A launcher that spawns `run` on every (re)start.
    pub fn launcher<F, Fut, E>(run: F) -> Launcher
    where
        F: Fn(Client, Shutdown) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let run = Arc::new(run);
        Arc::new(move |target: Target<'_>| {
            let run = run.clone();
            async move {
                // The operator's own client, built as the binary builds it: without kube's
                // client-side retries, so an API answer such as a PodDisruptionBudget's 429
                // reaches the operator as it does in a cluster.
                let client = crate::cluster::client_from_kubeconfig_with(target.kubeconfig, |c| {
                    c.default_retry = false;
                })
                .await?;
                let operator: Box<dyn RunningOperator> =
                    Box::new(InProcess::spawn(client, move |c, s| run(c, s)));
                Ok(operator)
            }
            .boxed()
        })
    }

    /// Asks the operator to shut down and waits (at most [`OPERATOR_TIMEOUT`]) for its result.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(OPERATOR_TIMEOUT, self.task)
            .await
            .context("the operator did not stop")?
            .context("the operator task failed")?
    }
}

impl RunningOperator for InProcess {
    fn stop(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        InProcess::stop(*self).boxed()
    }
}

/// The operator as a child process with its log file.
pub struct OperatorProcess {
    child: Child,
    /// Address of its metrics/health server.
    pub metrics_addr: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// A free loopback TCP port (bound and released; the operator binds it right after).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
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
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
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

    /// Starts the operator binary with `kubeconfig` for all namespaces, without leader election,
    /// on a fresh loopback metrics port, logging to `log`.
    pub async fn start_for_all_namespaces(kubeconfig: &Path, log: PathBuf) -> Result<Self> {
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        Self::start_for_all_namespaces_at(kubeconfig, log, &metrics_addr).await
    }

    /// [`OperatorProcess::start_for_all_namespaces`] with the metrics server on `metrics_addr`,
    /// for a scraper that must find the operator at the same address after a restart.
    pub async fn start_for_all_namespaces_at(
        kubeconfig: &Path,
        log: PathBuf,
        metrics_addr: &str,
    ) -> Result<Self> {
        let args: Vec<String> = [
            "run",
            "--metrics-addr",
            metrics_addr,
            "--log-format",
            "text",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let envs = [("POD_NAMESPACE".to_owned(), "default".to_owned())];
        Self::start(kubeconfig, &args, &envs, metrics_addr, log).await
    }

    /// A launcher that starts the operator for all namespaces, without leader election, on a
    /// fresh loopback metrics port, logging to `operator.log` in the state directory (appended
    /// across restarts).
    pub fn launcher() -> Launcher {
        Arc::new(|target: Target<'_>| {
            async move {
                let log = target.state_dir.join("operator.log");
                let operator = Self::start_for_all_namespaces(target.kubeconfig, log).await?;
                Ok(Box::new(operator) as Box<dyn RunningOperator>)
            }
            .boxed()
        })
    }

    /// Waits until the operator serves `/healthz`. Tests then wait on what the operator does
    /// (MicroService status, children) rather than on `/readyz`: on kubesim an operator start
    /// sometimes never reports its caches synced although it reconciles, and waiting on that
    /// would hide every other result.
    async fn wait_serving(&mut self) -> Result<()> {
        let url = format!("http://{}/healthz", self.metrics_addr);
        let child = &mut self.child;
        let log = self.log.clone();
        let what = format!("the operator's /healthz at {url}");
        let ready = wait::poll(&what, OPERATOR_TIMEOUT, || {
            let exited = child.try_wait();
            let url = url.clone();
            let log = log.clone();
            async move {
                if let Ok(Some(status)) = exited {
                    bail!("operator exited ({status}); log:\n{}", tail(&log, 40));
                }
                Ok(http::get(&url)
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
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
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed ({status})");
        }
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

impl RunningOperator for OperatorProcess {
    fn stop(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        OperatorProcess::stop(*self).boxed()
    }

    fn log(&self) -> Option<&Path> {
        Some(&self.log)
    }
}
