//! One container as a local process, supervised: wait out the back-off, start it (see `spawn`),
//! announce it, run its probes and watch for exits, liveness kills and pod shutdown, then decide
//! — per the pod's restartPolicy — whether to start it again. Each step is a function below, in
//! that order; [`run`] strings them together.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::pod::PodShared;
use super::probe::{check_for, ProbeCheck, ProbeKind, ProbeParams, ProbeState};
use super::probe_run;
use super::spawn::{spawn, SpawnError};
use super::status::RunState;
use crate::node::events::Severity;

fn now() -> Time {
    Time(jiff::Timestamp::now())
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
            s = child.wait() => {
                // Its completion is noticed at the next relist, like any exit.
                let noticed = shared.env.relist.noticed_at(Instant::now());
                tokio::select! {
                    () = token.cancelled() => {},
                    () = tokio::time::sleep_until(noticed.into()) => {},
                }
                s.ok()
            }
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

/// How a run ended: the exit status and when the process ended (`finishedAt`, which a runtime
/// reports as the exit's own time, however late the kubelet notices it).
type Ended = (Option<ExitStatus>, Time);

enum Outcome {
    Exited(Ended),
    Killed(Ended),
    Stopped(Ended),
}

/// What one container runner carries across restarts.
struct Runner {
    shared: Arc<PodShared>,
    index: usize,
    c: Container,
    exe: PathBuf,
    token: CancellationToken,
    policy: String,
    /// The pod's own grace period (a liveness kill uses it; a pod stop uses the deletion's).
    spec_grace: Duration,
    consecutive: u32,
    last_start: Option<Instant>,
}

impl Runner {
    fn pod_label(&self) -> String {
        let s = &self.shared;
        format!("{}_{}({})", s.name, s.namespace, s.uid)
    }

    /// Step 1: wait out the crash-loop back-off after a previous start. False if cancelled.
    async fn wait_backoff(&self) -> bool {
        let Some(start) = self.last_start else {
            return !self.token.is_cancelled();
        };
        let delay = self.shared.env.ctx.config.backoff.delay(self.consecutive);
        let until = start + delay;
        if Instant::now() < until {
            let label = self.pod_label();
            let msg = format!(
                "back-off {}s restarting failed container={} pod={label}",
                delay.as_secs(),
                self.c.name
            );
            self.shared.update_container(self.index, |s| {
                s.state = RunState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(msg),
                }
            });
            let text = format!(
                "Back-off restarting failed container {} in pod {label}",
                self.c.name
            );
            self.shared.event(Severity::Warning, "BackOff", text).await;
            tokio::select! {
                () = self.token.cancelled() => return false,
                () = tokio::time::sleep_until(until.into()) => {},
            }
        }
        !self.token.is_cancelled()
    }

    /// Step 2: start the process, or report why it cannot start. `None`: try again (the
    /// failure is recorded) — unless the token is cancelled.
    async fn start(&mut self) -> Option<Child> {
        let (shared, index) = (&self.shared, self.index);
        match spawn(shared, &self.c, &self.exe, self.last_start.is_some()).await {
            Ok(child) => Some(child),
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
                    () = self.token.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                None
            }
            Err(SpawnError::Start(m)) => {
                shared
                    .event(Severity::Warning, "Failed", format!("Error: {m}"))
                    .await;
                let t = now();
                shared.update_container(index, |s| {
                    s.last_state = Some(RunState::Terminated {
                        exit_code: 128,
                        signal: None,
                        reason: "StartError".into(),
                        started_at: None,
                        finished_at: t,
                        container_id: None,
                    });
                    s.restart_count += 1;
                });
                self.consecutive += 1;
                self.last_start = Some(Instant::now());
                None
            }
        }
    }

    /// Step 3: the kubelet's Pulled/Created/Started events.
    async fn announce(&self) {
        let image = self.c.image.clone().unwrap_or_default();
        let name = &self.c.name;
        let events = [
            (
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            ),
            ("Created", format!("Created container: {name}")),
            ("Started", format!("Started container {name}")),
        ];
        for (reason, text) in events {
            self.shared.event(Severity::Normal, reason, text).await;
        }
    }

    /// Step 4: run the probes and wait for the process to exit, fail liveness or be stopped. An
    /// exit is acted on at the next relist (see `relist`); until then the container keeps its
    /// state and its readiness probe keeps running, as on a real node.
    async fn supervise(
        &self,
        child: &mut Child,
        started_at: &Time,
        container_id: Option<String>,
    ) -> Outcome {
        let (shared, index, c) = (&self.shared, self.index, &self.c);
        let probe_token = self.token.child_token();
        let (flip_tx, mut flips) = mpsc::channel(8);
        let (started_tx, started_rx) = watch::channel(c.startup_probe.is_none());
        let ((has_startup, has_readiness), unsupported) =
            probe_tasks(c, shared, &started_rx, &flip_tx, &probe_token);
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
            s.container_id = container_id;
            s.started = !has_startup;
            s.ready = !has_startup && !has_readiness;
        });
        let relist = shared.env.relist;
        // The exit seen but not yet noticed, and when the relist notices it.
        let mut exit: Option<Ended> = None;
        let mut noticed = tokio::time::Instant::now();
        let outcome = loop {
            tokio::select! {
                s = child.wait(), if exit.is_none() => {
                    if relist.is_instant() {
                        break Outcome::Exited((s.ok(), now()));
                    }
                    noticed = relist.noticed_at(Instant::now()).into();
                    exit = Some((s.ok(), now()));
                }
                () = tokio::time::sleep_until(noticed), if exit.is_some() => {
                    if let Some(ended) = exit.take() {
                        break Outcome::Exited(ended);
                    }
                }
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
                    // The process is gone: the relist restarts it, not the failing probe.
                    (_, _) if exit.is_some() => {}
                    (kind, _) => {
                        let which = if kind == ProbeKind::Startup { "Startup" } else { "Liveness" };
                        shared.event(Severity::Warning, "Unhealthy", format!("{which} probe failed: {message}")).await;
                        let text = format!("Container {} failed {} probe, will be restarted", c.name, which.to_lowercase());
                        shared.event(Severity::Normal, "Killing", text).await;
                        shared.update_container(index, |s| s.ready = false);
                        let status = terminate(child, self.spec_grace).await;
                        break Outcome::Killed((status, now()));
                    }
                },
                () = self.token.cancelled() => {
                    shared.update_container(index, |s| s.ready = false);
                    let ended = match exit.take() {
                        Some(ended) => ended,
                        None => (terminate(child, shared.grace()).await, now()),
                    };
                    break Outcome::Stopped(ended);
                }
            }
        };
        probe_token.cancel();
        outcome
    }

    /// Step 5: record the end of the run; true if the container is to be started again.
    async fn finish(
        &mut self,
        outcome: Outcome,
        started_at: Time,
        start: Instant,
        container_id: Option<String>,
    ) -> bool {
        let ((status, finished_at), stopped, killed) = match outcome {
            Outcome::Exited(e) => (e, false, false),
            Outcome::Killed(e) => (e, false, true),
            Outcome::Stopped(e) => (e, true, false),
        };
        let (exit_code, signal) = exit_of(status);
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        let term = RunState::Terminated {
            exit_code,
            signal,
            reason: reason.into(),
            started_at: Some(started_at),
            finished_at,
            container_id,
        };
        let shared = &self.shared;
        if stopped {
            shared.update_container(self.index, |s| {
                s.state = term;
                s.ready = false;
            });
            return false;
        }
        let restart = match self.policy.as_str() {
            "Never" => false,
            "OnFailure" => exit_code != 0 || killed,
            _ => true,
        };
        if !restart {
            shared.update_container(self.index, |s| {
                s.state = term;
                s.ready = false;
                s.started = false;
                s.will_restart = false;
            });
            self.token.cancelled().await;
            return false;
        }
        if shared.env.ctx.config.backoff.resets_after(start.elapsed()) {
            self.consecutive = 0;
        }
        self.consecutive += 1;
        shared.update_container(self.index, |s| {
            s.last_state = Some(term.clone());
            s.state = term;
            s.restart_count += 1;
            s.ready = false;
            s.started = false;
        });
        true
    }
}

/// Runs a main container until the pod stops.
pub(super) async fn run(
    shared: Arc<PodShared>,
    index: usize,
    c: Container,
    exe: PathBuf,
    token: CancellationToken,
) {
    let spec = shared.pod().and_then(|p| p.spec);
    let policy = spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    let spec_grace = spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .map_or(Duration::from_secs(30), |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
    let mut runner = Runner {
        shared,
        index,
        c,
        exe,
        token,
        policy,
        spec_grace,
        consecutive: 0,
        last_start: None,
    };
    loop {
        if !runner.wait_backoff().await {
            return;
        }
        let Some(mut child) = runner.start().await else {
            if runner.token.is_cancelled() {
                return;
            }
            continue;
        };
        let started_at = now();
        let start = Instant::now();
        runner.last_start = Some(start);
        let pid = child.id();
        if let Some(pid) = pid {
            runner.shared.env.pids.add(pid);
        }
        // The process is the container (an `unshare` wrapper execs into it): its PID names it.
        let container_id = pid.map(crate::node::container_id);
        runner.announce().await;
        let outcome = runner
            .supervise(&mut child, &started_at, container_id.clone())
            .await;
        if let Some(pid) = pid {
            runner.shared.env.pids.remove(pid);
        }
        if !runner
            .finish(outcome, started_at, start, container_id)
            .await
        {
            return;
        }
    }
}
