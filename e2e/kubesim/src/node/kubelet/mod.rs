//! The process kubelet: one worker task per pod bound to this node, one runner task per container.
//!
//! The loop lists pods on every pod event (and every resync) and hands each worker the latest copy
//! of its pod; a worker notices deletion (deletionTimestamp or disappearance) and terminates its
//! processes. Every child process is registered by PID so that dropping the node can SIGKILL them
//! synchronously even if no task gets to run again.

pub mod backoff;
mod container;
pub mod env;
mod pod;
pub mod probe;
mod probe_run;
mod relist;
mod sa;
mod spawn;
pub mod status;
mod volumes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ipam::IpPool;
use super::{trigger, NodeCtx};

/// PIDs of every live pod process.
#[derive(Default)]
pub(crate) struct Pids(Mutex<HashSet<u32>>);

impl Pids {
    pub fn add(&self, pid: u32) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid);
    }
    pub fn remove(&self, pid: u32) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
    }
    fn drain(&self) -> Vec<u32> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect()
    }
}

struct Worker {
    tx: watch::Sender<Option<Pod>>,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

/// The kubelet's shared state.
pub(crate) struct Kubelet {
    ctx: Arc<NodeCtx>,
    workers: Mutex<HashMap<String, Worker>>,
    pids: Arc<Pids>,
    ips: Arc<Mutex<IpPool>>,
    relist: relist::Relist,
}

impl Kubelet {
    pub fn new(ctx: Arc<NodeCtx>) -> Self {
        let ips = Arc::new(Mutex::new(IpPool::new(ctx.config.pod_range)));
        let relist = relist::Relist::new(ctx.config.relist_period);
        Self {
            ctx,
            workers: Mutex::new(HashMap::new()),
            pids: Arc::default(),
            ips,
            relist,
        }
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Worker>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the pod loop until cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let notify = Arc::new(Notify::new());
        trigger::watch_all::<Pod>(&self.ctx.client, notify.clone(), token.clone());
        notify.notify_one();
        while trigger::next_pass(&notify, self.ctx.config.resync, &token).await {
            let pods = match kube::Api::<Pod>::all(self.ctx.client.clone())
                .list(&ListParams::default())
                .await
            {
                Ok(list) => list.items,
                Err(e) => {
                    tracing::debug!(error = %e, "kubelet could not list pods; retrying");
                    continue;
                }
            };
            self.sync(pods);
        }
    }

    fn sync(&self, pods: Vec<Pod>) {
        let node = &self.ctx.config.node_name;
        let mut workers = self.workers();
        let mut seen = HashSet::new();
        for pod in pods {
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| n != node)
            {
                continue;
            }
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            seen.insert(uid.clone());
            match workers.get(&uid) {
                Some(w) => {
                    w.tx.send_if_modified(|cur| {
                        let changed = cur.as_ref().map(|c| &c.metadata.resource_version)
                            != Some(&pod.metadata.resource_version);
                        if changed {
                            *cur = Some(pod.clone());
                        }
                        changed
                    });
                }
                // Already confirmed with grace 0 and only held by finalizers: nothing to run.
                None if pod.metadata.deletion_timestamp.is_some()
                    && pod.metadata.deletion_grace_period_seconds == Some(0) => {}
                None => {
                    let (tx, rx) = watch::channel(Some(pod.clone()));
                    let shutdown = CancellationToken::new();
                    let env = pod::WorkerEnv {
                        ctx: self.ctx.clone(),
                        pids: self.pids.clone(),
                        ips: self.ips.clone(),
                        relist: self.relist,
                    };
                    let handle = tokio::spawn(pod::run(env, pod, rx, shutdown.clone()));
                    workers.insert(
                        uid,
                        Worker {
                            tx,
                            shutdown,
                            handle,
                        },
                    );
                }
            }
        }
        for (uid, w) in workers.iter() {
            if !seen.contains(uid) {
                w.tx.send_if_modified(|cur| cur.take().is_some());
            }
        }
        workers.retain(|_, w| !w.handle.is_finished());
    }

    /// Terminates every pod gracefully (capped by `shutdown_grace`) and waits for the workers.
    pub async fn stop_all(&self) {
        let handles: Vec<JoinHandle<()>> = self
            .workers()
            .drain()
            .map(|(_, w)| {
                w.shutdown.cancel();
                w.handle
            })
            .collect();
        let limit = self.ctx.config.shutdown_grace + Duration::from_secs(5);
        for h in handles {
            let _ = tokio::time::timeout(limit, h).await;
        }
        self.kill_all_now();
    }

    /// SIGKILLs every pod process right now, without waiting (used on drop).
    pub fn kill_all_now(&self) {
        for w in self.workers().values() {
            w.shutdown.cancel();
            w.handle.abort();
        }
        let pids: Vec<String> = self
            .pids
            .drain()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        if !pids.is_empty() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .args(&pids)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
