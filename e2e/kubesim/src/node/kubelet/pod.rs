//! One pod's worker: allocates its IP, "pulls" images (looks them up in the table), writes its
//! volumes, runs init containers to completion, starts a runner per container, keeps the pod's
//! status written, and on deletion terminates the processes and deletes the pod with grace 0.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::status::{pod_status, ContainerInfo, PodInfo, RunState};
use super::{container, volumes, Pids};
use crate::node::events::Severity;
use crate::node::ipam::IpPool;
use crate::node::{logs, NodeCtx};

const KUBELET_MANAGER: &str = "kubesim-kubelet";

/// What a worker needs from the kubelet.
pub(crate) struct WorkerEnv {
    pub ctx: Arc<NodeCtx>,
    pub pids: Arc<Pids>,
    pub ips: Arc<Mutex<IpPool>>,
    /// When exits of containers are noticed.
    pub relist: super::relist::Relist,
}

/// State shared by a pod's worker, container runners and status writer.
pub(super) struct PodShared {
    pub env: WorkerEnv,
    pub pod_ip: Ipv4Addr,
    pub pod_dir: PathBuf,
    pub info: Mutex<PodInfo>,
    pub changed: Notify,
    pub latest: watch::Receiver<Option<Pod>>,
    /// Grace period for the current termination (set before runners are cancelled).
    pub grace: Mutex<Duration>,
    pub volumes: Mutex<BTreeMap<String, PathBuf>>,
    /// The ServiceAccount projection's directory (token, ca.crt, namespace), when automounted.
    pub service_account_dir: Mutex<Option<PathBuf>>,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl PodShared {
    pub fn update(&self, f: impl FnOnce(&mut PodInfo)) {
        f(&mut self.info.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_one();
    }

    pub fn update_container(&self, index: usize, f: impl FnOnce(&mut ContainerInfo)) {
        self.update(|info| {
            if let Some(c) = info.containers.get_mut(index) {
                f(c);
            }
        });
    }

    pub fn pod(&self) -> Option<Pod> {
        self.latest.borrow().clone()
    }

    pub fn grace(&self) -> Duration {
        *self.grace.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub async fn event(&self, severity: Severity, reason: &str, message: String) {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: Some(self.uid.clone()),
            ..Default::default()
        };
        self.env
            .ctx
            .events
            .emit("kubelet", reference, severity, reason, message)
            .await;
    }
}

fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

enum End {
    /// deletionTimestamp set: terminate, then delete the object with grace 0.
    Deleted(Duration),
    /// The object is gone already.
    Gone,
    /// The node is shutting down.
    Shutdown,
}

async fn wait_for_end(rx: &mut watch::Receiver<Option<Pod>>, shutdown: &CancellationToken) -> End {
    loop {
        match &*rx.borrow_and_update() {
            None => return End::Gone,
            Some(p) if p.metadata.deletion_timestamp.is_some() => return End::Deleted(grace_of(p)),
            Some(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return End::Shutdown,
            r = rx.changed() => if r.is_err() { return End::Gone },
        }
    }
}

/// Runs the pod until it is deleted or the node shuts down.
pub(crate) async fn run(
    env: WorkerEnv,
    pod: Pod,
    mut rx: watch::Receiver<Option<Pod>>,
    shutdown: CancellationToken,
) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        // Terminating before this kubelet ran anything for it (or after an earlier worker's
        // final delete failed): nothing to stop, only the deletion to finish.
        final_delete(&env, &namespace, &name, &uid).await;
        return;
    }
    if spec.node_name.as_deref().is_none_or(str::is_empty) {
        bind(&env, &namespace, &name).await;
    }
    let ports: Vec<u16> = spec
        .containers
        .iter()
        .flat_map(|c| match c.ports.as_deref() {
            Some(ports) if !ports.is_empty() => ports
                .iter()
                .filter_map(|p| u16::try_from(p.container_port).ok())
                .collect(),
            _ => vec![u16::try_from(super::env::DEFAULT_PORT).unwrap_or(8080)],
        })
        .collect();
    let ip = env
        .ips
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .allocate_where(|ip| crate::node::ipam::ports_free(ip, &ports));
    let Some(pod_ip) = ip else {
        tracing::warn!(pod = %name, "no free pod IP");
        wait_for_end(&mut rx, &shutdown).await;
        return;
    };
    let config = &env.ctx.config;
    let pod_dir = config
        .state_dir
        .join("pods")
        .join(format!("{namespace}_{name}_{uid}"));
    let log_dir = logs::pod_log_dir(&config.state_dir, &namespace, &name);
    let _ = std::fs::remove_dir_all(&log_dir);
    let _ = std::fs::create_dir_all(&log_dir);
    let _ = std::fs::create_dir_all(&pod_dir);
    let info = PodInfo {
        pod_ip: Some(pod_ip.to_string()),
        host_ip: config.host_ip.to_string(),
        start_time: Time(jiff::Timestamp::now()),
        initialized: spec.init_containers.as_ref().is_none_or(Vec::is_empty),
        containers: spec
            .containers
            .iter()
            .map(|c| {
                ContainerInfo::waiting(
                    &c.name,
                    c.image.as_deref().unwrap_or_default(),
                    "ContainerCreating",
                )
            })
            .collect(),
    };
    let initial_grace = grace_of(&pod);
    let shared = Arc::new(PodShared {
        env,
        pod_ip,
        pod_dir: pod_dir.clone(),
        info: Mutex::new(info),
        changed: Notify::new(),
        latest: rx.clone(),
        grace: Mutex::new(initial_grace),
        volumes: Mutex::new(BTreeMap::new()),
        service_account_dir: Mutex::new(None),
        name: name.clone(),
        namespace: namespace.clone(),
        uid: uid.clone(),
    });
    let writer_token = CancellationToken::new();
    let writer = tokio::spawn(status_writer(shared.clone(), writer_token.clone()));
    shared.changed.notify_one();
    let work = CancellationToken::new();
    let lifecycle = tokio::spawn(lifecycle(shared.clone(), spec, work.clone()));

    let end = wait_for_end(&mut rx, &shutdown).await;
    let grace = match &end {
        End::Deleted(g) => *g,
        End::Gone => initial_grace,
        End::Shutdown => initial_grace.min(shared.env.ctx.config.shutdown_grace),
    };
    *shared.grace.lock().unwrap_or_else(PoisonError::into_inner) = grace;
    work.cancel();
    let _ = lifecycle.await;
    writer_token.cancel();
    let _ = writer.await;
    if matches!(end, End::Deleted(_)) {
        final_delete(&shared.env, &namespace, &name, &uid).await;
    }
    let _ = std::fs::remove_dir_all(&pod_dir);
    shared
        .env
        .ips
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .release(pod_ip);
}

/// Deletes the pod object with grace 0 once its processes are gone, as the kubelet confirms a
/// graceful deletion. The UID precondition keeps a recreated pod of the same name safe.
async fn final_delete(env: &WorkerEnv, namespace: &str, name: &str, uid: &str) {
    let api: Api<Pod> = Api::namespaced(env.ctx.client.clone(), namespace);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::debug!(pod = %name, error = %e, "final pod delete failed"),
    }
}

/// Binds the pod to this node (the scheduler's job on a one-node cluster), so that the API server
/// deletes it gracefully and leaves the final deletion to the kubelet. A server without the
/// `binding` subresource simply leaves the pod unbound.
async fn bind(env: &WorkerEnv, namespace: &str, name: &str) {
    let api: Api<Pod> = Api::namespaced(env.ctx.client.clone(), namespace);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": { "name": name, "namespace": namespace },
        "target": { "apiVersion": "v1", "kind": "Node", "name": env.ctx.config.node_name },
    });
    let pp = kube::api::PostParams {
        field_manager: Some("kubesim-scheduler".into()),
        ..Default::default()
    };
    let result: Result<serde_json::Value, kube::Error> =
        api.create_subresource("binding", name, &pp, &binding).await;
    if let Err(e) = result {
        tracing::debug!(pod = %name, error = %e, "pod not bound");
    }
}

/// Waits `d` or until cancelled; false when cancelled.
async fn pause(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        () = token.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

/// Looks up every image; reports the first unmapped one like a failed pull and returns None.
async fn pull_images(
    shared: &PodShared,
    spec: &PodSpec,
    token: &CancellationToken,
) -> Option<(Vec<PathBuf>, Vec<PathBuf>)> {
    let table = &shared.env.ctx.config.images;
    let resolve = |c: &Container| {
        let image = c.image.clone().unwrap_or_default();
        match table.resolve(&image) {
            Some(p) if p.is_file() => Ok(p),
            Some(p) => Err((
                image,
                format!(
                    "executable {} for this image does not exist (build it first)",
                    p.display()
                ),
            )),
            None => Err((image, "image is not in kubesim's image table".to_string())),
        }
    };
    let init: Vec<_> = spec.init_containers.iter().flatten().map(resolve).collect();
    let main: Vec<_> = spec.containers.iter().map(resolve).collect();
    if init.iter().chain(main.iter()).all(Result::is_ok) {
        return Some((
            init.into_iter().flatten().collect(),
            main.into_iter().flatten().collect(),
        ));
    }
    let failures: Vec<(usize, String, String)> = main
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.as_ref()
                .err()
                .map(|(img, msg)| (i, img.clone(), msg.clone()))
        })
        .chain(init.iter().filter_map(|r| {
            r.as_ref()
                .err()
                .map(|(img, msg)| (usize::MAX, img.clone(), msg.clone()))
        }))
        .collect();
    for (i, image, msg) in &failures {
        let text = format!("Failed to pull image \"{image}\": {msg}");
        shared.update_container(*i, |c| {
            c.state = RunState::Waiting {
                reason: "ErrImagePull".into(),
                message: Some(text.clone()),
            }
        });
        shared.event(Severity::Warning, "Failed", text).await;
        shared
            .event(Severity::Warning, "Failed", "Error: ErrImagePull".into())
            .await;
    }
    if !pause(Duration::from_secs(1), token).await {
        return None;
    }
    for (i, image, _) in &failures {
        let text = format!("Back-off pulling image \"{image}\"");
        shared.update_container(*i, |c| {
            c.state = RunState::Waiting {
                reason: "ImagePullBackOff".into(),
                message: Some(text.clone()),
            }
        });
        shared.event(Severity::Normal, "BackOff", text).await;
    }
    token.cancelled().await;
    None
}

async fn lifecycle(shared: Arc<PodShared>, spec: PodSpec, token: CancellationToken) {
    let Some((init_exes, exes)) = pull_images(&shared, &spec, &token).await else {
        return;
    };
    let mut reported = false;
    loop {
        match prepare_mounts(&shared, &token).await {
            Ok(()) => break,
            Err(msg) => {
                if !reported {
                    shared
                        .event(
                            Severity::Warning,
                            "FailedMount",
                            format!("MountVolume.SetUp failed: {msg}"),
                        )
                        .await;
                    reported = true;
                }
                if !pause(Duration::from_secs(2), &token).await {
                    return;
                }
            }
        }
    }
    for (c, exe) in spec.init_containers.iter().flatten().zip(init_exes) {
        if !container::run_init(&shared, c, &exe, &token).await {
            return;
        }
    }
    shared.update(|i| i.initialized = true);
    let runners: Vec<_> = spec
        .containers
        .iter()
        .cloned()
        .zip(exes)
        .enumerate()
        .map(|(i, (c, exe))| tokio::spawn(container::run(shared.clone(), i, c, exe, token.clone())))
        .collect();
    for r in runners {
        let _ = r.await;
    }
}

/// Writes the pod's volumes and its ServiceAccount projection (kept fresh until `token`).
async fn prepare_mounts(shared: &PodShared, token: &CancellationToken) -> Result<(), String> {
    let client = &shared.env.ctx.client;
    let pod = shared.pod().unwrap_or_default();
    let v = volumes::prepare(client, &pod, &shared.pod_dir).await?;
    let sa_dir = super::sa::project(client, &pod, &shared.pod_dir, token).await?;
    *shared
        .volumes
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = v;
    *shared
        .service_account_dir
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = sa_dir;
    Ok(())
}

async fn status_writer(shared: Arc<PodShared>, token: CancellationToken) {
    let api: Api<Pod> = Api::namespaced(shared.env.ctx.client.clone(), &shared.namespace);
    let pp = PatchParams {
        field_manager: Some(KUBELET_MANAGER.into()),
        ..Default::default()
    };
    let mut last: Option<PodStatus> = None;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = shared.changed.notified() => {},
        }
        loop {
            let info = shared
                .info
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let previous = last
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            let status = pod_status(&info, &previous, &Time(jiff::Timestamp::now()));
            // Once the pod is terminating its status is left as last written: kubesim's API
            // server treats any write to a terminating object without finalizers as the final
            // one, and the pod must stay until its processes are gone.
            let terminating = shared
                .pod()
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
            if last.as_ref() == Some(&status) || terminating {
                break;
            }
            match api
                .patch_status(
                    &shared.name,
                    &pp,
                    &Patch::Merge(&json!({ "status": status })),
                )
                .await
            {
                Ok(_) => {
                    last = Some(status);
                    break;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => {
                    tracing::debug!(pod = %shared.name, error = %e, "pod status write failed; retrying");
                    if !pause(Duration::from_millis(500), &token).await {
                        return;
                    }
                }
            }
        }
    }
}
