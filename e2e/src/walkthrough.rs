//! `kubesim up` started as a README walkthrough starts it, for the tests that replay one: the
//! README's arguments plus a private state directory and address ranges (so parallel clusters do
//! not collide), and the kubeconfig taken from the `export KUBECONFIG=` line it prints.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_testkit::paths::{repo_root, workspace_binary};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `kubesim up <args>` with its state in `state` and pod/service ranges in
/// `127.<first_octet + pid % 5>.*`, waits up to `timeout` for its kubeconfig, and keeps echoing
/// its output (so it never blocks on a full pipe). The child is killed when dropped.
pub async fn kubesim_up(
    args: &[&str],
    state: &Path,
    first_octet: u32,
    timeout: Duration,
) -> Result<(Child, PathBuf)> {
    let kubesim = workspace_binary("kubesim", "kubesim")?;
    let pid = std::process::id();
    let (a, b) = (first_octet + pid % 5, (pid / 5) % 256);
    let mut child = Command::new(kubesim)
        .arg("up")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .arg("--pod-cidr")
        .arg(format!("127.{a}.{b}.0/25"))
        .arg("--service-cidr")
        .arg(format!("127.{a}.{b}.128/25"))
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting kubesim up")?;
    let stdout = child.stdout.take().context("kubesim stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let kubeconfig = tokio::time::timeout(timeout, async {
        while let Some(line) = lines.next_line().await? {
            println!("kubesim: {line}");
            if let Some(path) = line.strip_prefix("export KUBECONFIG=") {
                return Ok(PathBuf::from(path.trim()));
            }
        }
        bail!("kubesim exited before printing the export line")
    })
    .await
    .context("kubesim up did not print its kubeconfig in time")??;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("kubesim: {line}");
        }
    });
    Ok((child, kubeconfig))
}
