//! A service binary as a child process, run the way a pod runs it: started with its environment
//! on a free loopback port, waited on until its readiness check passes, stopped with SIGTERM as
//! the kubelet stops it, and its exit status handed back. stdout and stderr go to a log file that
//! is printed when the process is dropped, so a failing test shows what the service said (the
//! test runner shows a passing test's output only when asked).
//!
//! Generic over the service: the readiness check is a closure (an HTTP `/readyz` by default, a
//! gRPC health check for a gRPC service), so this crate depends on no service crate.

use std::ffi::OsStr;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::process::{Child, Command};

use crate::{http, wait};

/// How long a service may take to become ready, or to exit, on a loaded 2-core machine.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// A readiness check: given the address the process listens on, `Ok(true)` once it is ready.
/// An error counts as not ready yet (a refused connection while it starts) and is reported if
/// the deadline passes.
pub type Check = Arc<dyn Fn(SocketAddr) -> BoxFuture<'static, Result<bool>> + Send + Sync>;

/// A [`Check`] from an async closure, e.g. a gRPC health check.
pub fn check<F, Fut>(probe: F) -> Check
where
    F: Fn(SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool>> + Send + 'static,
{
    Arc::new(move |addr| probe(addr).boxed())
}

/// The check "`GET path` answers 200", as a kubelet's HTTP probe.
pub fn http_ok(path: &str) -> Check {
    let path = path.to_owned();
    check(move |addr| {
        let url = format!("http://{addr}{path}");
        async move { Ok(http::get(&url).await?.status == 200) }
    })
}

/// Builds a child process; [`Builder::start`] runs it until ready, [`Builder::run`] until it
/// exits.
pub struct Builder {
    name: String,
    command: Command,
    listen_env: Option<String>,
    ready: Check,
    timeout: Duration,
}

impl Builder {
    /// The binary at `program` (e.g. `env!("CARGO_BIN_EXE_users")`), called `name` in messages.
    pub fn new(name: &str, program: impl AsRef<OsStr>) -> Self {
        Self {
            name: name.to_owned(),
            command: Command::new(program),
            listen_env: None,
            ready: http_ok("/readyz"),
            timeout: PROCESS_TIMEOUT,
        }
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    /// Adds command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Sets environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.command.envs(vars);
        self
    }

    /// Removes an environment variable the test process may have, so the service starts from
    /// its defaults.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.command.env_remove(key);
        self
    }

    /// The working directory (default: the test's).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Sets `var` to `127.0.0.1:<a free port>`: the address the service listens on, which
    /// [`Process::addr`] and the readiness check use.
    pub fn listen_env(mut self, var: &str) -> Self {
        self.listen_env = Some(var.to_owned());
        self
    }

    /// The readiness check [`Builder::start`] waits on (default: [`http_ok`]`("/readyz")`).
    pub fn ready(mut self, check: Check) -> Self {
        self.ready = check;
        self
    }

    /// Starts the process and waits until its readiness check passes. Fails with its log if it
    /// exits first or is not ready within [`PROCESS_TIMEOUT`].
    pub async fn start(self) -> Result<Process> {
        let mut process = self.spawn()?;
        let ready = process.ready.clone();
        process.wait_until("ready", &ready).await?;
        Ok(process)
    }

    /// Starts the process without waiting for anything; the test waits with
    /// [`Process::wait_until`].
    pub fn spawn(mut self) -> Result<Process> {
        let addr = match &self.listen_env {
            Some(var) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], crate::operator::free_port()?));
                self.command.env(var, addr.to_string());
                Some(addr)
            }
            None => None,
        };
        let dir = tempfile::tempdir()?;
        let log = dir.path().join(format!("{}.log", self.name));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = self
            .command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        Ok(Process {
            name: self.name,
            child,
            addr,
            ready: self.ready,
            timeout: self.timeout,
            log,
            _dir: dir,
        })
    }

    /// Runs the process until it exits by itself (a refused configuration, say) and returns
    /// its status and output; fails if it is still running after [`PROCESS_TIMEOUT`].
    pub async fn run(self) -> Result<Exited> {
        let mut process = self.spawn()?;
        let status = process.wait_exit().await?;
        Ok(Exited {
            status,
            log: process.log(),
        })
    }
}

/// A process that has exited: its status and everything it wrote to stdout and stderr.
#[derive(Debug)]
pub struct Exited {
    /// How it exited.
    pub status: ExitStatus,
    /// stdout and stderr, interleaved as written.
    pub log: String,
}

/// A running child process. Dropping it kills the process (if still running) and prints its
/// log.
pub struct Process {
    name: String,
    child: Child,
    addr: Option<SocketAddr>,
    ready: Check,
    timeout: Duration,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// The address given in [`Builder::listen_env`] (`127.0.0.1:0` if none was).
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Its operating-system process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// What it has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `check` (through [`wait::poll`]) until it passes; fails at once, with the log, if
    /// the process exits, and after [`PROCESS_TIMEOUT`] naming `what`.
    pub async fn wait_until(&mut self, what: &str, check: &Check) -> Result<()> {
        let addr = self.addr();
        let what = format!("{} to be {what}", self.name);
        let child = &mut self.child;
        let outcome = wait::poll(&what, self.timeout, || {
            let exited = child.try_wait();
            let check = check(addr);
            async move {
                if let Some(status) = exited? {
                    return Ok(Some(Err(status)));
                }
                Ok(check.await?.then_some(Ok(())))
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => bail!(
                "{} exited ({status}) while waiting for it to be {what}; log:\n{}",
                self.name,
                self.log()
            ),
            Err(err) => Err(err.context(format!("{} log:\n{}", self.name, self.log()))),
        }
    }

    /// Waits again for the readiness check given at start.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let ready = self.ready.clone();
        self.wait_until("ready", &ready).await
    }

    /// Sends SIGTERM, as the kubelet does when a pod stops, and waits for the process to exit;
    /// returns how it exited. Still running after [`PROCESS_TIMEOUT`] is an error.
    pub async fn terminate(mut self) -> Result<ExitStatus> {
        self.sigterm_and_wait().await
    }

    /// [`Process::terminate`], and everything the process wrote up to its exit.
    pub async fn terminate_with_log(mut self) -> Result<Exited> {
        let status = self.sigterm_and_wait().await?;
        Ok(Exited {
            status,
            log: self.log(),
        })
    }

    async fn sigterm_and_wait(&mut self) -> Result<ExitStatus> {
        let pid = self
            .child
            .id()
            .with_context(|| format!("{} has already exited", self.name))?;
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        if !kill.success() {
            bail!("kill -TERM {pid} failed ({kill})");
        }
        self.wait_exit().await
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill ends it, and reaps it.
    pub async fn kill(mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }

    /// Waits for the process to exit by itself.
    async fn wait_exit(&mut self) -> Result<ExitStatus> {
        match tokio::time::timeout(self.timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "{} still running {:?} later; log:\n{}",
                self.name,
                self.timeout,
                self.log()
            ),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        eprintln!("----- {} log -----\n{}", self.name, self.log());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ready_process_is_stopped_by_sigterm_and_its_log_kept() -> Result<()> {
        // The check decides readiness, SIGTERM ends the process (here by the signal: `sh` sets
        // no handler), and what it wrote is in the log.
        let ready = check(|_| async { Ok(true) });
        let process = Builder::new("sh", "sh")
            .args(["-c", "echo started; exec sleep 600"])
            .ready(ready)
            .start()
            .await?;
        wait::poll("the log line", Duration::from_secs(10), || {
            let seen = process.log().contains("started");
            async move { Ok(seen.then_some(())) }
        })
        .await?;
        let status = process.terminate().await?;
        assert_eq!(status.code(), None, "ended by a signal: {status}");
        Ok(())
    }

    #[tokio::test]
    async fn a_process_exiting_before_ready_fails_the_wait_with_its_log() -> Result<()> {
        // An early exit is reported at once with the status and what the process said, not
        // after the deadline.
        let never = check(|_| async { Ok(false) });
        let err = Builder::new("sh", "sh")
            .args(["-c", "echo bad config >&2; exit 3"])
            .ready(never)
            .start()
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            err.contains("exit status: 3") && err.contains("bad config"),
            "{err}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn run_returns_the_exit_status_and_output() -> Result<()> {
        // A process that refuses to start is run to its exit and its output handed back.
        let exited = Builder::new("sh", "sh")
            .env("GREETING", "refused")
            .args(["-c", "echo $GREETING >&2; exit 1"])
            .run()
            .await?;
        assert_eq!(exited.status.code(), Some(1));
        assert_eq!(exited.log.trim(), "refused");
        Ok(())
    }
}
