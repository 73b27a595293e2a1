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

/// Runs a walkthrough's commands (kubectl, helm) as a user types them: from the repository
/// root, with the walkthrough's `KUBECONFIG` and a private `HOME` (helm keeps its state there).
pub struct Shell {
    /// The kubeconfig `kubesim up` wrote.
    pub kubeconfig: PathBuf,
    /// `HOME` of every command.
    pub home: PathBuf,
    /// The helm binary (from `e2e/install-tools.sh`).
    pub helm: PathBuf,
    /// Deadline of each command.
    pub step_timeout: Duration,
}

impl Shell {
    /// Runs `program args`, echoing the command line; its stdout, or an error with its output.
    pub async fn run(&self, program: &Path, args: &[&str]) -> Result<String> {
        println!("$ {} {}", program.display(), args.join(" "));
        let run = Command::new(program)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .current_dir(repo_root())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(self.step_timeout, run)
            .await
            .with_context(|| format!("{args:?} timed out"))??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "{} {args:?} failed:\n{stdout}\n{}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// `kubectl args`.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.run(Path::new("kubectl"), args).await
    }

    /// `helm args`.
    pub async fn helm(&self, args: &[&str]) -> Result<String> {
        self.run(&self.helm, args).await
    }
}

/// True when this process runs as root (kubesim then mounts pod volumes at their real paths,
/// which in-cluster clients need).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Stops `kubesim up` as Ctrl-C would (SIGTERM), so it stops its pods' processes too, and waits up
/// to `grace` before killing it (SIGKILL would leave the pods' processes running).
pub async fn stop_kubesim(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// A bare `kubesim up` on a private state directory (as root: its pods run the operator
/// in-cluster) and a [`Shell`] with a private `HOME` against it, for the Helm walkthroughs.
pub struct HelmKubesim {
    /// The shell the walkthrough's commands run in.
    pub sh: Shell,
    kubesim: Child,
    state: tempfile::TempDir,
    _home: tempfile::TempDir,
}

impl HelmKubesim {
    /// Starts it with pod and service ranges from `first_octet` (see [`kubesim_up`]); `None`,
    /// saying why, when not root.
    pub async fn up(
        first_octet: u32,
        up_timeout: Duration,
        step_timeout: Duration,
    ) -> Result<Option<Self>> {
        if !is_root() {
            eprintln!("not run: the in-cluster operator needs kubesim to run as root (see README)");
            return Ok(None);
        }
        let state = tempfile::tempdir()?;
        let home = tempfile::tempdir()?;
        let (kubesim, kubeconfig) = kubesim_up(&[], state.path(), first_octet, up_timeout).await?;
        let sh = Shell {
            kubeconfig,
            home: home.path().to_path_buf(),
            helm: crate::tools::find("helm")?,
            step_timeout,
        };
        Ok(Some(Self {
            sh,
            kubesim,
            state,
            _home: home,
        }))
    }

    /// Stops kubesim; when the walkthrough `failed`, first prints the logs of the operator pods
    /// in `operator_ns`.
    pub async fn stop(mut self, operator_ns: &str, failed: bool) {
        stop_kubesim(&mut self.kubesim, Duration::from_secs(60)).await;
        if failed {
            let log = std::fs::read_dir(self.state.path().join("logs").join(operator_ns))
                .into_iter()
                .flatten()
                .flatten()
                .map(|d| d.path().join("operator.log"))
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("operator log:\n{log}");
        }
    }
}
