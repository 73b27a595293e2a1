//! Starting one container process: gather what its environment needs from the API, build the
//! environment and arguments, open its log, and start the mapped executable in the pod
//! directory. As root, the process runs in its own mount namespace (util-linux `unshare`) with
//! each volume — and the ServiceAccount projection — bind-mounted at the path the spec names;
//! without root it finds them through `KUBESIM_VOLUME_*` and mount-path rewriting only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::PoisonError;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret, Service};
use kube::api::{Api, ListParams};
use tokio::process::{Child, Command};

use super::env::{self, EnvInputs};
use super::pod::PodShared;
use super::{sa, volumes};
use crate::node::logs;

/// Variables passed through from kubesim's own environment (a container image would set these).
const PASSTHROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "RUST_BACKTRACE",
    "RUST_LOG",
];

/// Bind-mounts `src dst` pairs (creating the mount points), then runs the rest of the arguments.
/// A mount that fails stops the container with exit code 127 and the reason in its log.
const MOUNT_SCRIPT: &str = r#"while [ "$1" != "--" ]; do
  if [ -d "$1" ]; then mkdir -p "$2"; else mkdir -p "$(dirname "$2")" && touch "$2"; fi &&
  mount --bind "$1" "$2" || { echo "kubesim: cannot mount $1 at $2" >&2; exit 127; }
  shift 2
done
shift
exec "$@""#;

pub(super) enum SpawnError {
    /// The container's configuration cannot be built (`CreateContainerConfigError`).
    Config(String),
    /// The process could not be started (`StartError`).
    Start(String),
}

async fn list_in<K>(client: &kube::Client, ns: Option<&str>) -> Result<Vec<K>, String>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| e.to_string())
}

fn by_name<K: kube::Resource>(items: Vec<K>) -> BTreeMap<String, K> {
    items
        .into_iter()
        .map(|o| (o.meta().name.clone().unwrap_or_default(), o))
        .collect()
}

/// What the environment of a container is built from.
struct ApiInputs {
    config_maps: BTreeMap<String, ConfigMap>,
    secrets: BTreeMap<String, Secret>,
    services: Vec<Service>,
}

async fn api_inputs(client: &kube::Client, ns: &str) -> Result<ApiInputs, SpawnError> {
    let config_maps = list_in::<ConfigMap>(client, Some(ns))
        .await
        .map_err(SpawnError::Config)?;
    let secrets = list_in::<Secret>(client, Some(ns))
        .await
        .map_err(SpawnError::Config)?;
    let services = list_in::<Service>(client, None)
        .await
        .map_err(SpawnError::Config)?;
    Ok(ApiInputs {
        config_maps: by_name(config_maps),
        secrets: by_name(secrets),
        services,
    })
}

/// The container's mounts: its volumes, plus the ServiceAccount projection unless the container
/// mounts something of its own there.
fn container_mounts(shared: &PodShared, c: &Container) -> Vec<(String, PathBuf)> {
    let volume_dirs = shared
        .volumes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut mounts = volumes::mounts(c, &volume_dirs);
    let sa_dir = shared
        .service_account_dir
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(dir) = sa_dir {
        if !mounts.iter().any(|(p, _)| p == sa::MOUNT_PATH) {
            mounts.push((sa::MOUNT_PATH.to_string(), dir));
        }
    }
    mounts
}

fn open_log(
    shared: &PodShared,
    c: &Container,
    rotate: bool,
) -> Result<(std::fs::File, std::fs::File), SpawnError> {
    let state_dir = &shared.env.ctx.config.state_dir;
    let ns = shared.namespace.as_str();
    let log = logs::container_log_path(state_dir, ns, &shared.name, &c.name, false);
    if rotate && log.exists() {
        let _ = std::fs::rename(
            &log,
            logs::container_log_path(state_dir, ns, &shared.name, &c.name, true),
        );
    }
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
    };
    match (open(), open()) {
        (Ok(o), Ok(e)) => Ok((o, e)),
        (Err(e), _) | (_, Err(e)) => Err(SpawnError::Start(format!(
            "cannot open log {}: {e}",
            log.display()
        ))),
    }
}

/// Whether kubesim may create mount namespaces (it runs as root and `unshare` is installed).
fn can_isolate_mounts() -> bool {
    use std::os::unix::fs::MetadataExt;
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
            && std::process::Command::new("unshare")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    })
}

/// The command that runs `exe args`: directly, or inside a private mount namespace with every
/// mount bind-mounted at its path.
fn command(exe: &Path, args: &[String], mounts: &[(String, PathBuf)]) -> Command {
    if mounts.is_empty() || !can_isolate_mounts() {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        return cmd;
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        MOUNT_SCRIPT,
        "sh",
    ]);
    for (path, dir) in mounts {
        // The process starts in the pod directory: relative sources would miss.
        cmd.arg(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()))
            .arg(path);
    }
    cmd.arg("--").arg(exe).args(args);
    cmd
}

/// An argument that is a wildcard listen address (`0.0.0.0:8080`, as charts pass to
/// `--metrics-addr`) would collide between pods sharing the machine: bind the pod's IP instead.
fn narrow_wildcard(arg: &str, pod_ip: std::net::Ipv4Addr) -> String {
    match arg.strip_prefix("0.0.0.0:") {
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{pod_ip}:{port}")
        }
        _ => arg.to_string(),
    }
}

/// Starts the container's process. `rotate` moves the previous run's log aside first.
pub(super) async fn spawn(
    shared: &PodShared,
    c: &Container,
    exe: &Path,
    rotate: bool,
) -> Result<Child, SpawnError> {
    let pod = shared
        .pod()
        .ok_or_else(|| SpawnError::Config("pod is gone".into()))?;
    let ns = shared.namespace.as_str();
    let api = api_inputs(&shared.env.ctx.client, ns).await?;
    let mounts = container_mounts(shared, c);
    let config = &shared.env.ctx.config;
    let inputs = EnvInputs {
        pod: &pod,
        pod_ip: shared.pod_ip,
        host_ip: config.host_ip,
        node_name: &config.node_name,
        config_maps: &api.config_maps,
        secrets: &api.secrets,
        services: &api.services,
        mounts: &mounts,
    };
    let vars = env::resolve(&inputs, c).map_err(|e| SpawnError::Config(e.to_string()))?;
    let args: Vec<String> = c
        .command
        .iter()
        .flatten()
        .skip(1)
        .chain(c.args.iter().flatten())
        .map(|a| {
            let a = env::rewrite_mount_paths(
                &env::rewrite_service_names(&env::expand(a, &vars), ns, &api.services),
                &mounts,
            );
            narrow_wildcard(&a, shared.pod_ip)
        })
        .collect();
    let (out, err) = open_log(shared, c, rotate)?;
    let mut cmd = command(exe, &args, &mounts);
    cmd.current_dir(&shared.pod_dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    for key in PASSTHROUGH {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(vars);
    cmd.spawn()
        .map_err(|e| SpawnError::Start(format!("cannot start {}: {e}", exe.display())))
}
