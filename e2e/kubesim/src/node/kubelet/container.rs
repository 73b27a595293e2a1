//! One container as a local process: builds its environment, starts the mapped executable in the
//! pod directory with output appended to its log, runs its probes, and restarts it after exits or
//! liveness failures with the kubelet's back-off, per the pod's restartPolicy.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::env::{self, EnvInputs};
use super::pod::PodShared;
use super::probe::{check_for, ProbeCheck, ProbeKind, ProbeParams, ProbeState};
use super::status::RunState;
use super::{probe_run, volumes};
use crate::node::events::Severity;
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

enum SpawnError {
    /// The container's configuration cannot be built (`CreateContainerConfigError`).
    Config(String),
    /// The process could not be started (`StartError`).
    Start(String),
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
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

/// Starts the container's process. `rotate` moves the previous run's log aside first.
async fn spawn(
    shared: &PodShared,
    c: &Container,
    exe: &Path,
    rotate: bool,
) -> Result<Child, SpawnError> {
    let pod = shared
        .pod()
        .ok_or_else(|| SpawnError::Config("pod is gone".into()))?;
    let client = &shared.env.ctx.client;
    let ns = shared.namespace.as_str();
    let config_maps = list_in::<ConfigMap>(client, Some(ns))
        .await
        .map_err(SpawnError::Config)?;
    let secrets = list_in::<Secret>(client, Some(ns))
        .await
        .map_err(SpawnError::Config)?;
    let services = list_in::<Service>(client, None)
        .await
        .map_err(SpawnError::Config)?;
    let by_name = |items: Vec<_>| -> std::collections::BTreeMap<String, _> {
        items
            .into_iter()
            .map(|o: ConfigMap| (o.metadata.name.clone().unwrap_or_default(), o))
            .collect()
    };
    let config_maps = by_name(config_maps);
    let secrets = secrets
        .into_iter()
        .map(|s: Secret| (s.metadata.name.clone().unwrap_or_default(), s))
        .collect();
    let volume_dirs = shared
        .volumes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mounts = volumes::mounts(c, &volume_dirs);
    let config = &shared.env.ctx.config;
    let inputs = EnvInputs {
        pod: &pod,
        pod_ip: shared.pod_ip,
        host_ip: config.host_ip,
        node_name: &config.node_name,
        config_maps: &config_maps,
        secrets: &secrets,
        services: &services,
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
            env::rewrite_mount_paths(
                &env::rewrite_service_names(&env::expand(a, &vars), ns, &services),
                &mounts,
            )
        })
        .collect();
    let log = logs::container_log_path(&config.state_dir, ns, &shared.name, &c.name, false);
    if rotate && log.exists() {
        let _ = std::fs::rename(
            &log,
            logs::container_log_path(&config.state_dir, ns, &shared.name, &c.name, true),
        );
    }
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
    };
    let (out, err) = match (open(), open()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return Err(SpawnError::Start(format!(
                "cannot open log {}: {e}",
                log.display()
            )))
        }
    };
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .current_dir(&shared.pod_dir)
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

/// SIGTERM, wait up to `grace`, then SIGKILL.
async fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(r) => r.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

fn exit_of(status: Option<ExitStatus>) -> (i32, Option<i32>) {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            (None, None) => (1, None),
        },
        None => (1, None),
    }
}

/// Runs an init container to successful completion, retrying with back-off. False if cancelled.
pub(super) async fn run_init(
    shared: &Arc<PodShared>,
    c: &Container,
    exe: &Path,
    token: &CancellationToken,
) -> bool {
    let backoff = shared.env.ctx.config.backoff;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let delay = backoff.delay(attempt);
        tokio::select! {
            () = token.cancelled() => return false,
            () = tokio::time::sleep(delay) => {},
        }
        let mut child = match spawn(shared, c, exe, attempt > 1).await {
            Ok(child) => child,
            Err(SpawnError::Config(m) | SpawnError::Start(m)) => {
                shared
                    .event(Severity::Warning, "Failed", format!("Error: {m}"))
                    .await;
                continue;
            }
        };
        let pid = child.id();
        if let Some(pid) = pid {
            shared.env.pids.add(pid);
        }
        let status = tokio::select! {
            s = child.wait() => s.ok(),
            () = token.cancelled() => terminate(&mut child, shared.grace()).await,
        };
        if let Some(pid) = pid {
            shared.env.pids.remove(pid);
        }
        if token.is_cancelled() {
            return false;
        }
        if exit_of(status).0 == 0 {
            return true;
        }
    }
}

/// Starts the container's probes; returns whether it has startup and readiness probes, and the
/// kinds of probe kubesim cannot run (they count as passing).
fn probe_tasks(
    c: &Container,
    shared: &PodShared,
    started: &watch::Receiver<bool>,
    flips: &mpsc::Sender<probe_run::Flip>,
    token: &CancellationToken,
) -> ((bool, bool), Vec<&'static str>) {
    let probes = [
        (ProbeKind::Startup, c.startup_probe.as_ref()),
        (ProbeKind::Readiness, c.readiness_probe.as_ref()),
        (ProbeKind::Liveness, c.liveness_probe.as_ref()),
    ];
    let mut has = (false, false);
    let mut unsupported = Vec::new();
    for (kind, probe) in probes {
        let Some(probe) = probe else { continue };
        let check = check_for(probe, c, shared.pod_ip);
        if let ProbeCheck::Unsupported(what) = check {
            unsupported.push(what);
        }
        match kind {
            ProbeKind::Startup => has.0 = true,
            ProbeKind::Readiness => has.1 = true,
            ProbeKind::Liveness => {}
        }
        let state = ProbeState::new(kind, ProbeParams::from_probe(probe));
        tokio::spawn(probe_run::run(
            state,
            check,
            started.clone(),
            flips.clone(),
            token.clone(),
        ));
    }
    (has, unsupported)
}

enum Outcome {
    Exited(Option<ExitStatus>),
    Killed(Option<ExitStatus>),
    Stopped(Option<ExitStatus>),
}

/// Runs a main container until the pod stops.
pub(super) async fn run(
    shared: Arc<PodShared>,
    index: usize,
    c: Container,
    exe: PathBuf,
    token: CancellationToken,
) {
    let backoff = shared.env.ctx.config.backoff;
    let policy = shared
        .pod()
        .and_then(|p| p.spec?.restart_policy)
        .unwrap_or_else(|| "Always".into());
    let spec_grace = shared
        .pod()
        .and_then(|p| p.spec?.termination_grace_period_seconds)
        .map_or(Duration::from_secs(30), |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
    let pod_label = format!("{}_{}({})", shared.name, shared.namespace, shared.uid);
    let mut consecutive = 0u32;
    let mut last_start: Option<Instant> = None;
    loop {
        if let Some(start) = last_start {
            let delay = backoff.delay(consecutive);
            let until = start + delay;
            if Instant::now() < until {
                let msg = format!(
                    "back-off {}s restarting failed container={} pod={pod_label}",
                    delay.as_secs(),
                    c.name
                );
                shared.update_container(index, |s| {
                    s.state = RunState::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some(msg),
                    }
                });
                let text = format!(
                    "Back-off restarting failed container {} in pod {pod_label}",
                    c.name
                );
                shared.event(Severity::Warning, "BackOff", text).await;
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep_until(until.into()) => {},
                }
            }
        }
        if token.is_cancelled() {
            return;
        }
        let mut child = match spawn(&shared, &c, &exe, last_start.is_some()).await {
            Ok(child) => child,
            Err(SpawnError::Config(m)) => {
                shared.update_container(index, |s| {
                    s.state = RunState::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(m.clone()),
                    }
                });
                shared
                    .event(Severity::Warning, "Failed", format!("Error: {m}"))
                    .await;
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
            Err(SpawnError::Start(m)) => {
                shared
                    .event(Severity::Warning, "Failed", format!("Error: {m}"))
                    .await;
                let t = now();
                shared.update_container(index, |s| {
                    let term = RunState::Terminated {
                        exit_code: 128,
                        signal: None,
                        reason: "StartError".into(),
                        started_at: None,
                        finished_at: t,
                    };
                    s.last_state = Some(term);
                    s.restart_count += 1;
                });
                consecutive += 1;
                last_start = Some(Instant::now());
                continue;
            }
        };
        let started_at = now();
        let start = Instant::now();
        last_start = Some(start);
        let pid = child.id();
        if let Some(pid) = pid {
            shared.env.pids.add(pid);
        }
        let image = c.image.clone().unwrap_or_default();
        shared
            .event(
                Severity::Normal,
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            )
            .await;
        shared
            .event(
                Severity::Normal,
                "Created",
                format!("Created container: {}", c.name),
            )
            .await;
        shared
            .event(
                Severity::Normal,
                "Started",
                format!("Started container {}", c.name),
            )
            .await;

        let probe_token = token.child_token();
        let (flip_tx, mut flips) = mpsc::channel(8);
        let (started_tx, started_rx) = watch::channel(c.startup_probe.is_none());
        let ((has_startup, has_readiness), unsupported) =
            probe_tasks(&c, &shared, &started_rx, &flip_tx, &probe_token);
        for what in unsupported {
            let text = format!(
                "{what} probes are not run by kubesim; container {} is treated as passing them",
                c.name
            );
            shared
                .event(Severity::Warning, "ProbeNotSimulated", text)
                .await;
        }
        shared.update_container(index, |s| {
            s.state = RunState::Running {
                started_at: started_at.clone(),
            };
            s.started = !has_startup;
            s.ready = !has_startup && !has_readiness;
        });
        let outcome = loop {
            tokio::select! {
                s = child.wait() => break Outcome::Exited(s.ok()),
                Some((kind, verdict, message)) = flips.recv() => match (kind, verdict) {
                    (ProbeKind::Startup, true) => {
                        let _ = started_tx.send(true);
                        shared.update_container(index, |s| { s.started = true; s.ready = !has_readiness; });
                    }
                    (ProbeKind::Readiness, ready) => {
                        shared.update_container(index, |s| s.ready = ready);
                        if !ready {
                            shared.event(Severity::Warning, "Unhealthy", format!("Readiness probe failed: {message}")).await;
                        }
                    }
                    (kind, _) => {
                        let which = if kind == ProbeKind::Startup { "Startup" } else { "Liveness" };
                        shared.event(Severity::Warning, "Unhealthy", format!("{which} probe failed: {message}")).await;
                        let text = format!("Container {} failed {} probe, will be restarted", c.name, which.to_lowercase());
                        shared.event(Severity::Normal, "Killing", text).await;
                        shared.update_container(index, |s| s.ready = false);
                        break Outcome::Killed(terminate(&mut child, spec_grace).await);
                    }
                },
                () = token.cancelled() => {
                    shared.update_container(index, |s| s.ready = false);
                    break Outcome::Stopped(terminate(&mut child, shared.grace()).await);
                }
            }
        };
        probe_token.cancel();
        if let Some(pid) = pid {
            shared.env.pids.remove(pid);
        }
        let (status, stopped, killed) = match outcome {
            Outcome::Exited(s) => (s, false, false),
            Outcome::Killed(s) => (s, false, true),
            Outcome::Stopped(s) => (s, true, false),
        };
        let (exit_code, signal) = exit_of(status);
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        let term = RunState::Terminated {
            exit_code,
            signal,
            reason: reason.into(),
            started_at: Some(started_at),
            finished_at: now(),
        };
        if stopped {
            shared.update_container(index, |s| {
                s.state = term;
                s.ready = false;
            });
            return;
        }
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => exit_code != 0 || killed,
            _ => true,
        };
        if !restart {
            shared.update_container(index, |s| {
                s.state = term;
                s.ready = false;
                s.started = false;
                s.will_restart = false;
            });
            token.cancelled().await;
            return;
        }
        if backoff.resets_after(start.elapsed()) {
            consecutive = 0;
        }
        consecutive += 1;
        shared.update_container(index, |s| {
            s.last_state = Some(term.clone());
            s.state = term;
            s.restart_count += 1;
            s.ready = false;
            s.started = false;
        });
    }
}
