//! `kubesim`: a local Kubernetes API server with a process-based node, for development and tests
//! on machines without a container engine. Not for production.
//!
//! `kubesim up` (the default) starts the API server and the node, writes a kubeconfig and runs
//! until SIGINT/SIGTERM, then stops every pod process. `--operator` installs the Flotilla CRD and
//! runs the operator against it (with `--rollout-on-config-change`); `--demo` builds the sample services and applies their manifests
//! (users, auth, a RabbitMQ broker, orders and shipping).
//! `kubesim serve` runs the API server alone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;
use kubesim::node::{self, ImageTable, Ipv4Range, NodeConfig};
use kubesim::{Cluster, ClusterConfig};
use serde::Deserialize;
use tokio::process::{Child, Command};

const FIELD_MANAGER: &str = "kubesim";
const CRD_FILE: &str = "crds/microservices.flotilla.rs.yaml";
const DEMO_DIR: &str = "services/deploy";
/// The demo fleet, in order: users and auth (HTTP), the broker, orders (gRPC, publishing an event
/// per order) and shipping (consuming them).
const DEMO_FILES: &[&str] = &[
    "users.yaml",
    "auth.yaml",
    "rabbitmq.yaml",
    "orders.yaml",
    "shipping.yaml",
];

/// Prints the samples' Secrets with fresh random values (the repository ships none).
const DEMO_SECRETS: &str = "secrets.sh";
const OPERATOR_BIN: &str = "target/debug/flotilla-operator";

#[derive(Parser)]
#[command(
    name = "kubesim",
    about = "A local Kubernetes API server whose pods run as local processes (dev and test only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    up: UpArgs,
}

#[derive(Subcommand)]
enum Sub {
    /// Start the API server and the node (the default).
    Up(UpArgs),
    /// Start the API server only; pods stay Pending.
    Serve(CommonArgs),
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// Directory for the kubeconfig, pod working directories and logs
    /// [default: <workspace>/target/kubesim].
    #[arg(long, env = "KUBESIM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Port for the API server on 127.0.0.1 (0 picks a free one).
    #[arg(long, env = "KUBESIM_PORT", default_value_t = 0)]
    port: u16,
    /// Serve plain HTTP with no authentication or authorization (every request is the
    /// admin's). By default kubesim serves HTTPS, authenticates every request and enforces RBAC.
    #[arg(long, env = "KUBESIM_INSECURE_HTTP")]
    insecure_http: bool,
}

#[derive(Args, Clone)]
struct UpArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Image → executable table [default: <workspace>/e2e/kubesim/images.yaml].
    #[arg(long, env = "KUBESIM_IMAGES")]
    images: Option<PathBuf>,
    /// Install the Flotilla CRD and run the operator (built with cargo if missing), rolling
    /// MicroServices when a Secret or ConfigMap their env reads changes.
    #[arg(long)]
    operator: bool,
    /// Build the sample services and apply their MicroService manifests.
    #[arg(long)]
    demo: bool,
    /// Address for the operator's metrics/health server (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    operator_metrics_addr: String,
    /// Base of the crash-loop back-off in seconds (the kubelet's is 10).
    #[arg(long, default_value_t = 10)]
    backoff_base_seconds: u64,
    /// How often the kubelet relists containers to notice that one exited on its own, in
    /// milliseconds. A real kubelet relists every 1000 ms, so a crashed pod leaves its
    /// Service's endpoints (and is restarted) 0-1 s after its process died; 0 notices exits
    /// at once.
    #[arg(long, default_value_t = 1000)]
    relist_period_ms: u64,
    /// Loopback range for pod IPs.
    #[arg(long, default_value = "127.2.0.0/16", value_parser = Ipv4Range::parse_loopback)]
    pod_cidr: Ipv4Range,
    /// Loopback range for Service cluster IPs.
    #[arg(long, default_value = "127.1.0.0/16", value_parser = Ipv4Range::parse_loopback)]
    service_cidr: Ipv4Range,
}

/// The workspace root: the nearest ancestor of the current directory with a `[workspace]`
/// Cargo.toml.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    for dir in cwd.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if std::fs::read_to_string(&manifest).is_ok_and(|t| t.contains("[workspace]")) {
            return Ok(dir.to_path_buf());
        }
    }
    bail!(
        "run kubesim from inside the Flotilla workspace (no Cargo.toml with [workspace] above {})",
        cwd.display()
    )
}

/// `CARGO_TARGET_DIR` (relative to the workspace root if relative), when set.
fn custom_target_dir(root: &Path) -> Option<PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty())?;
    Some(root.join(dir))
}

fn require_file(root: &Path, rel: &str, what: &str) -> anyhow::Result<PathBuf> {
    let path = root.join(rel);
    if !path.is_file() {
        bail!(
            "{what}: {} is missing; it is part of the Flotilla workspace",
            path.display()
        );
    }
    Ok(path)
}

async fn start_cluster(
    common: &CommonArgs,
    root: &Path,
    kubernetes_service_ip: Option<std::net::Ipv4Addr>,
) -> anyhow::Result<(Cluster, PathBuf)> {
    let state_dir = common
        .state_dir
        .clone()
        .unwrap_or_else(|| root.join("target").join("kubesim"));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    // Pod processes run in their own directories: every path handed to them must be absolute.
    let state_dir = std::path::absolute(&state_dir)
        .with_context(|| format!("resolving {}", state_dir.display()))?;
    let config = ClusterConfig {
        port: common.port,
        kubeconfig_path: Some(state_dir.join("kubeconfig")),
        // `kubectl logs` reads the node's container logs from here.
        node_state_dir: Some(state_dir.clone()),
        secure: !common.insecure_http,
        kubernetes_service_ip,
        ..Default::default()
    };
    let cluster = Cluster::start(config)
        .await
        .context("starting the API server")?;
    Ok((cluster, state_dir))
}

/// Server-side applies every document of a YAML file, resolving kinds through discovery.
async fn apply_file(client: &kube::Client, path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut applied = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value.clone())
            .with_context(|| format!("parsing {}", path.display()))?;
        let types = obj
            .types
            .clone()
            .context("a document has no apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let name = obj
            .metadata
            .name
            .clone()
            .context("a document has no metadata.name")?;
        let (ar, caps) = pinned_kind(client, &gvk)
            .await
            .with_context(|| format!("the API server does not serve {}", types.kind))?;
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            let ns = obj
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            Api::namespaced_with(client.clone(), &ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .with_context(|| format!("applying {} {name}", types.kind))?;
        applied.push(format!("{}/{name}", types.kind.to_lowercase()));
    }
    Ok(applied)
}

/// Builds the workspace as the test command does (`--workspace --all-targets`): the sample
/// services the demo's images map to, and everything else. A build of only the samples' packages
/// would resolve their dependencies' features differently (features of test-only dependencies
/// are unified only when tests are built), so it would compile a second copy of half the
/// dependency tree after every test-command build; this one finds it all fresh.
async fn cargo_build(root: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--workspace", "--all-targets"])
        .current_dir(root);
    // The variables Cargo sets for the program it runs (`cargo run`, a test) describe that
    // program, not this build. Build scripts that watch them (ring's watches
    // CARGO_MANIFEST_DIR) would see them change and rebuild, and everything above them with it.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(crate_env) {
            cmd.env_remove(name);
        }
    }
    println!("building the workspace with cargo (the sample services and the rest) ...");
    let status = cmd.status().await.context("running cargo")?;
    if !status.success() {
        bail!("cargo build --workspace --all-targets failed");
    }
    Ok(())
}

/// Whether `name` is one of the variables Cargo sets for the crate it compiles or runs.
fn crate_env(name: &str) -> bool {
    const PREFIXES: [&str; 4] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ];
    const NAMES: [&str; 3] = [
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// Waits until a CRD is Established (or 30s have passed).
async fn wait_established(client: &kube::Client, name: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for _ in 0..300 {
        if let Ok(crd) = api.get(name).await {
            let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_operator(
    root: &Path,
    kubeconfig: &Path,
    state_dir: &Path,
    metrics: &str,
) -> anyhow::Result<Child> {
    let bin = match custom_target_dir(root) {
        Some(target) => target.join("debug").join("flotilla-operator"),
        None => root.join(OPERATOR_BIN),
    };
    if !bin.is_file() {
        cargo_build(root).await?;
    }
    let log_path = state_dir.join("operator.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    // Rolling on configuration changes is on, so a rotated Secret (the demo's auth-secrets)
    // rolls the MicroServices that read it; kubesim's admin kubeconfig may read Secrets.
    let child = Command::new(&bin)
        .arg("run")
        .arg("--metrics-addr")
        .arg(metrics)
        .arg("--rollout-on-config-change")
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut child = child;
    // An operator that cannot start (bad flags, port in use) exits at once: say so.
    if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        bail!(
            "the operator exited at once ({status}); last lines of {}:\n{}",
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    println!("operator running (log: {})", log_path.display());
    Ok(child)
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the start: one that arrives while kubesim is
/// still setting up (building, starting the operator, applying the demo) is kept and stops it
/// as soon as the setup is done, in the same order as later (operator, pods, API server),
/// instead of killing kubesim at once and leaving its operator and pods running.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the first of them (at once when one came during the setup).
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}

fn print_usage(cluster: &Cluster) {
    let kubeconfig = cluster.kubeconfig_path().display();
    println!("kubesim API server: {}", cluster.url());
    println!("kubeconfig: {kubeconfig}");
    println!();
    println!("export KUBECONFIG={kubeconfig}");
    println!();
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut stop = StopSignals::listen()?;
    let root = workspace_root()?;
    // Check every file the flags need before starting anything.
    let crd = if args.operator {
        Some(require_file(
            &root,
            CRD_FILE,
            "--operator needs the Flotilla CRD",
        )?)
    } else {
        None
    };
    let demo: Vec<PathBuf> = if args.demo {
        DEMO_FILES
            .iter()
            .map(|f| {
                require_file(
                    &root,
                    &format!("{DEMO_DIR}/{f}"),
                    "--demo needs the sample manifests",
                )
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        Vec::new()
    };
    let images_path = args
        .images
        .clone()
        .unwrap_or_else(|| root.join("e2e/kubesim/images.yaml"));
    let mut images = ImageTable::load(&images_path, &root)?;
    if let Some(target) = custom_target_dir(&root) {
        images = images.with_target_dir(&target);
    }
    if args.demo {
        cargo_build(&root).await?;
    }
    // The first address of the Service range is the `kubernetes` Service's, as on a real
    // cluster; the node's allocator skips it because the Service already holds it.
    let first = u32::from(args.service_cidr.base)
        & (u32::MAX << (32 - u32::from(args.service_cidr.prefix)));
    let kubernetes_ip = std::net::Ipv4Addr::from(first + 1);
    let (cluster, state_dir) = start_cluster(&args.common, &root, Some(kubernetes_ip)).await?;
    let client = cluster.client();
    let mut config = NodeConfig::new(&state_dir, images);
    config.backoff.base = Duration::from_secs(args.backoff_base_seconds.max(1));
    config.relist_period = Duration::from_millis(args.relist_period_ms);
    config.pod_range = args.pod_cidr;
    config.service_range = args.service_cidr;
    let node = node::start(client.clone(), config).await?;
    print_usage(&cluster);
    let mut operator = None;
    if let Some(crd) = crd {
        for o in apply_file(&client, &crd).await? {
            println!("applied {o}");
        }
        wait_established(&client, "microservices.flotilla.rs").await;
        operator = Some(
            start_operator(
                &root,
                cluster.kubeconfig_path(),
                &state_dir,
                &args.operator_metrics_addr,
            )
            .await?,
        );
    }
    if args.demo {
        // The sample Secrets, generated as the samples' README says, before their users.
        let script = require_file(
            &root,
            &format!("{DEMO_DIR}/{DEMO_SECRETS}"),
            "--demo needs the sample manifests",
        )?;
        let out = Command::new("bash").arg(&script).output().await?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let secrets = state_dir.join("demo-secrets.yaml");
        std::fs::write(&secrets, &out.stdout)?;
        for o in apply_file(&client, &secrets).await? {
            println!("applied {o}");
        }
    }
    for file in &demo {
        for o in apply_file(&client, file).await? {
            println!("applied {o}");
        }
    }
    if args.demo && !args.operator {
        println!("note: without --operator nothing turns the MicroServices into Deployments");
    }
    if args.demo {
        println!("try: kubectl get msvc,deploy,pods,svc");
    }
    println!("pod logs: {}", state_dir.join("logs").display());
    println!("Ctrl-C stops kubesim and every pod process.");
    stop.wait().await;
    println!("stopping ...");
    if let Some(mut child) = operator {
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    node.shutdown().await;
    cluster.shutdown().await;
    Ok(())
}

async fn serve(common: CommonArgs) -> anyhow::Result<()> {
    let mut stop = StopSignals::listen()?;
    let root = workspace_root()?;
    let (cluster, _) = start_cluster(&common, &root, None).await?;
    print_usage(&cluster);
    println!("API server only: pods stay Pending (use `kubesim up` to run them).");
    stop.wait().await;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => up(cli.up).await,
        Some(Sub::Up(args)) => up(args).await,
        Some(Sub::Serve(common)) => serve(common).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::crate_env;

    #[test]
    fn only_the_variables_describing_a_crate_are_left_out_of_the_demo_build() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_EXE_kubesim",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            assert!(crate_env(name), "{name}");
        }
        // What configures Cargo itself stays.
        for name in [
            "CARGO_HOME",
            "CARGO_INCREMENTAL",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
        ] {
            assert!(!crate_env(name), "{name}");
        }
    }
}
