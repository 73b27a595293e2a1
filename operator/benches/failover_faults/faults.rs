//! The kinds of fault the bench injects into pods, and how each is undone. A pod's process is
//! found through its `containerID` (`kubesim://<pid>`), as a container's through
//! `containerd://<id>` on a real node.

use std::fmt;

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Pod;

use crate::sim::{clear_fault, set_fault};

/// What goes wrong with a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// The pod's own readiness check fails (`/admin/faults` `{"unhealthy": true}`); its API
    /// calls still succeed.
    SelfDetected,
    /// The process is SIGKILLed; the kubelet notices at its next relist and restarts it.
    Crash,
    /// The process is SIGSTOPped: connections are accepted by the kernel and never answered.
    /// SIGCONT undoes it, unless the kubelet's liveness probe killed it first.
    Hang,
    /// Readiness passes but every API call answers 500 (`{"errorRate": 1.0}`): only the
    /// scraped error rate can tell.
    BadAnswers,
}

impl Fault {
    /// Every kind, in the order they are reported.
    pub const ALL: [Fault; 4] = [
        Fault::SelfDetected,
        Fault::Crash,
        Fault::Hang,
        Fault::BadAnswers,
    ];
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::SelfDetected => "self-detected",
            Fault::Crash => "crash",
            Fault::Hang => "hang",
            Fault::BadAnswers => "bad-answers",
        })
    }
}

/// The PID of the pod's (only) container, from its `containerID`; checked against the process
/// table so a signal never goes to another process.
pub fn pid_of(pod: &Pod) -> Result<u32> {
    let pid = kubesim::node::pod_pid(pod).map_err(anyhow::Error::msg)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if !matches!(comm.trim(), "users" | "orders") {
        bail!("pid {pid} is {comm:?}, not a users or orders process");
    }
    Ok(pid)
}

/// Sends `signal` to every process in `pids` in one `kill`; true when all got it.
async fn signal(signal: &str, pids: &[u32]) -> Result<bool> {
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(std::process::Stdio::null())
        .status()
        .await?;
    Ok(status.success())
}

/// Injects `fault` into all `pods` (processes `pids`) at once.
pub async fn inject(fault: Fault, pods: &[Pod], pids: &[u32]) -> Result<()> {
    let json = match fault {
        Fault::Crash => return ok_or(signal("KILL", pids).await?, "SIGKILL"),
        Fault::Hang => return ok_or(signal("STOP", pids).await?, "SIGSTOP"),
        Fault::SelfDetected => r#"{"unhealthy": true}"#,
        Fault::BadAnswers => r#"{"errorRate": 1.0}"#,
    };
    futures::future::try_join_all(pods.iter().map(|p| twice(|| set_fault(p, json)))).await?;
    Ok(())
}

/// Runs an idempotent admin request again once if it failed: a pod told `ejected` closes its
/// idle keep-alive connections, which can race a request on one.
async fn twice<F, Fut>(f: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    match f().await {
        Ok(()) => Ok(()),
        Err(_) => f().await,
    }
}

/// Undoes `fault`. A crashed process needs nothing (the kubelet restarted it); a hung one may
/// be gone already (its liveness probe failed), so a SIGCONT that finds no process is fine.
pub async fn recover(fault: Fault, pods: &[Pod], pids: &[u32]) -> Result<()> {
    match fault {
        Fault::Crash => {}
        Fault::Hang => {
            signal("CONT", pids).await?;
        }
        Fault::SelfDetected | Fault::BadAnswers => {
            futures::future::try_join_all(pods.iter().map(|p| twice(|| clear_fault(p)))).await?;
        }
    }
    Ok(())
}

fn ok_or(ok: bool, what: &str) -> Result<()> {
    if !ok {
        bail!("{what} did not reach every pod process");
    }
    Ok(())
}
