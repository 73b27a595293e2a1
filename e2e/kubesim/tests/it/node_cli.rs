//! The `kubesim up` binary: its kubeconfig works, its pods serve through cluster IPs, and SIGTERM
//! stops it together with every pod process, even one that arrives while it is still setting up.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use flotilla_testkit::wait::poll;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::node::*;

const WAIT: Duration = Duration::from_secs(60);

/// The first three octets of a /24 for this test process only (other suites use 127.1/127.2 and
/// 127.10-209); `offset` (0 or 128) keeps two tests of one process apart.
fn address_block(offset: u32) -> String {
    let pid = std::process::id();
    format!("127.{}.{}", 210 + pid % 40, (pid / 40 + offset) % 256)
}

/// Starts `kubesim up` with its state in `dir`, its pods and Services in `block` (from
/// [`address_block`]) and `extra` arguments, stdout piped.
fn kubesim_up<I, S>(dir: &Path, block: &str, extra: I) -> std::io::Result<tokio::process::Child>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kubesim"))
        .arg("up")
        .args(extra)
        .arg("--state-dir")
        .arg(dir)
        .arg("--pod-cidr")
        .arg(format!("{block}.0/25"))
        .arg("--service-cidr")
        .arg(format!("{block}.128/25"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

#[tokio::test]
async fn kubesim_up_runs_pods_and_stops_them_on_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images.yaml");
    let table = format!(
        "images:\n  - pattern: \"kubesim/testpod:*\"\n    executable: {}\n",
        env!("CARGO_BIN_EXE_kubesim-testpod")
    );
    std::fs::write(&images, table)?;
    let block = address_block(0);
    let mut kubesim = kubesim_up(
        dir.path(),
        &block,
        [OsStr::new("--images"), images.as_os_str()],
    )?;
    let stdout = kubesim.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let kubeconfig = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(path) = line.strip_prefix("export KUBECONFIG=") {
                return anyhow::Ok(path.to_string());
            }
        }
        anyhow::bail!("kubesim exited without printing the export line")
    })
    .await
    .context("waiting for the export line")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &service("cli"))
        .await?;
    deployments
        .create(&PostParams::default(), &deployment("cli", 2, IMAGE))
        .await?;
    let ready = poll("2 ready pods", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("app=cli"))
            .await?
            .items;
        Ok((list.len() == 2 && list.iter().all(is_ready)).then_some(list))
    })
    .await?;
    let ip = poll("cluster IP", WAIT, || async {
        Ok(services
            .get("cli")
            .await?
            .spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| !ip.is_empty()))
    })
    .await?;
    assert!(
        ip.starts_with(&format!("{block}.")),
        "cluster IP {ip} from --service-cidr"
    );
    let vip = format!("{ip}:8080").parse()?;
    poll("traffic through the cluster IP", WAIT, || async {
        Ok(
            matches!(http_get(vip, "/").await, Ok((200, body)) if body.starts_with("pod=cli-"))
                .then_some(()),
        )
    })
    .await?;
    let names: Vec<String> = ready
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert!(names.iter().all(|n| processes_of(n).len() == 1));

    let kubesim_pid = kubesim.id().context("kubesim pid")?;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(kubesim_pid.to_string())
        .status()?;
    let status = tokio::time::timeout(WAIT, kubesim.wait()).await??;
    assert!(status.success(), "kubesim exited with {status}");
    let left: usize = names.iter().map(|n| processes_of(n).len()).sum();
    assert_eq!(left, 0, "no pod process outlives kubesim");
    Ok(())
}

#[tokio::test]
async fn sigterm_during_the_setup_stops_the_operator_too() -> anyhow::Result<()> {
    // A SIGTERM that arrives after `kubesim up --operator --demo` started the operator but
    // before the demo is applied stops kubesim in order once the setup is done: it exits
    // cleanly and no operator outlives it.
    let dir = tempfile::tempdir()?;
    let mut kubesim = kubesim_up(
        dir.path(),
        &address_block(128),
        [
            "--operator",
            "--demo",
            "--operator-metrics-addr",
            "127.0.0.1:0",
        ],
    )?;
    let stdout = kubesim.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let kubeconfig = tokio::time::timeout(Duration::from_secs(180), async {
        let mut kubeconfig = None;
        while let Some(line) = lines.next_line().await? {
            if let Some(path) = line.strip_prefix("export KUBECONFIG=") {
                kubeconfig = Some(path.to_string());
            }
            if line.starts_with("operator running") {
                return kubeconfig.context("no export line before the operator started");
            }
        }
        anyhow::bail!("kubesim exited before starting the operator")
    })
    .await
    .context("waiting for the operator to start")??;
    let operator_env = format!("KUBECONFIG={kubeconfig}");
    assert_eq!(
        processes_with_env(&operator_env).len(),
        1,
        "one operator runs"
    );
    let kubesim_pid = kubesim.id().context("kubesim pid")?;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(kubesim_pid.to_string())
        .status()?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let status = tokio::time::timeout(WAIT, kubesim.wait()).await??;
    assert!(status.success(), "kubesim exited with {status}");
    assert_eq!(
        processes_with_env(&operator_env),
        Vec::<u32>::new(),
        "no operator outlives kubesim"
    );
    Ok(())
}
