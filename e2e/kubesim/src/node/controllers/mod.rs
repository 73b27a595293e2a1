//! The controller manager: one level-triggered loop that lists Deployments, ReplicaSets, Pods,
//! Services and EndpointSlices, asks the pure planners what to do, and executes their actions.
//!
//! Reads are fresh LISTs (consistent with every write made before them), so no informer-cache
//! "expectations" are needed; a failed write is logged and retried by the next pass, which comes
//! on the next watch event or after `NodeConfig::resync` at the latest.

pub mod deployment;
pub mod deployment_status;
pub mod endpoints;
pub mod replicaset;
pub mod rollout;
pub mod services;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::deployment::{is_controlled_by, DeploymentAction};
use self::endpoints::SliceAction;
use self::replicaset::ReplicaSetAction;
use super::events::{Recorder, Severity};
use super::{trigger, NodeCtx};

const DEPLOYMENT_MANAGER: &str = "kubesim-deployment-controller";
const REPLICASET_MANAGER: &str = "kubesim-replicaset-controller";
const ENDPOINTSLICE_MANAGER: &str = "kubesim-endpointslice-controller";
const IPAM_MANAGER: &str = "kubesim-service-ipam";

/// Runs the controller loop until cancelled.
pub(crate) async fn run(ctx: Arc<NodeCtx>, token: CancellationToken) {
    let notify = Arc::new(Notify::new());
    trigger::watch_all::<Deployment>(&ctx.client, notify.clone(), token.clone());
    trigger::watch_all::<ReplicaSet>(&ctx.client, notify.clone(), token.clone());
    trigger::watch_all::<Pod>(&ctx.client, notify.clone(), token.clone());
    trigger::watch_all::<Service>(&ctx.client, notify.clone(), token.clone());
    trigger::watch_all::<EndpointSlice>(&ctx.client, notify.clone(), token.clone());
    notify.notify_one();
    while trigger::next_pass(&notify, ctx.config.resync, &token).await {
        if let Err(e) = pass(&ctx).await {
            tracing::debug!(error = %e, "controller pass failed; retrying on the next pass");
        }
    }
}

async fn list<K>(client: &kube::Client) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items)
}

fn ns_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().namespace.clone().unwrap_or_default()
}

fn name_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

async fn pass(ctx: &NodeCtx) -> Result<(), kube::Error> {
    let client = &ctx.client;
    let services: Vec<Service> = list(client).await?;
    assign_cluster_ips(ctx, &services).await;
    let deployments: Vec<Deployment> = list(client).await?;
    let replica_sets: Vec<ReplicaSet> = list(client).await?;
    let pods: Vec<Pod> = list(client).await?;
    let now = Time(jiff::Timestamp::now());
    let mut pods_by_ns: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in &pods {
        pods_by_ns.entry(ns_of(p)).or_default().push(p);
    }
    for d in &deployments {
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let owned: Vec<ReplicaSet> = replica_sets
            .iter()
            .filter(|rs| ns_of(*rs) == ns_of(d) && is_controlled_by(&rs.metadata, &uid))
            .cloned()
            .collect();
        let ns_pods: &[&Pod] = pods_by_ns.get(&ns_of(d)).map_or(&[], Vec::as_slice);
        let mut last_ok = true;
        for action in deployment::plan(d, &owned, ns_pods, &now) {
            last_ok = run_deployment_action(ctx, d, action, last_ok).await;
        }
    }
    for rs in &replica_sets {
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let owned: Vec<&Pod> = pods_by_ns
            .get(&ns_of(rs))
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|p| is_controlled_by(&p.metadata, &uid))
                    .collect()
            })
            .unwrap_or_default();
        let rs_name = name_of(rs);
        let mut fresh = || format!("{rs_name}-{}", super::hash::random_suffix());
        let mut last_ok = true;
        for action in replicaset::plan(rs, &owned, &now, &mut fresh) {
            last_ok = run_replicaset_action(ctx, rs, action, last_ok).await;
        }
    }
    let slices: Vec<EndpointSlice> = list(client).await?;
    for svc in &services {
        if endpoints::managed_selector(svc).is_none() {
            continue;
        }
        let ns_pods: &[&Pod] = pods_by_ns.get(&ns_of(svc)).map_or(&[], Vec::as_slice);
        let existing: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                let labels = s.metadata.labels.clone().unwrap_or_default();
                ns_of(*s) == ns_of(svc)
                    && labels.get(endpoints::SERVICE_NAME_LABEL) == svc.metadata.name.as_ref()
                    && labels.get(endpoints::MANAGED_BY_LABEL).map(String::as_str)
                        == Some(endpoints::MANAGED_BY)
            })
            .collect();
        for action in endpoints::plan(svc, ns_pods, &existing) {
            run_slice_action(ctx, &ns_of(svc), action).await;
        }
    }
    Ok(())
}

/// Logs a failed write (the next pass retries it) and reports whether it succeeded.
fn log_failure(what: &str, name: &str, result: Result<(), kube::Error>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, what, name, "write failed; retrying on the next pass");
            false
        }
    }
}

async fn assign_cluster_ips(ctx: &NodeCtx, services: &[Service]) {
    let usable = |ip, svc: &Service| super::ipam::ports_free(ip, &services::tcp_ports(svc));
    for (ns, name, ip) in services::allocate(services, ctx.config.service_range, &usable) {
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
        let patch =
            json!({ "spec": { "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()] } });
        let pp = PatchParams {
            field_manager: Some(IPAM_MANAGER.into()),
            ..Default::default()
        };
        let r = api
            .patch(&name, &pp, &Patch::Merge(&patch))
            .await
            .map(|_| ());
        log_failure("service cluster IP", &name, r);
    }
}

/// Executes one action; `Event`s run only when the preceding write (`last_ok`) succeeded.
async fn run_deployment_action(
    ctx: &NodeCtx,
    d: &Deployment,
    action: DeploymentAction,
    last_ok: bool,
) -> bool {
    let ns = ns_of(d);
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams {
        field_manager: Some(DEPLOYMENT_MANAGER.into()),
        ..Default::default()
    };
    match action {
        DeploymentAction::CreateReplicaSet(rs) => {
            let post = PostParams {
                field_manager: Some(DEPLOYMENT_MANAGER.into()),
                ..Default::default()
            };
            match rs_api.create(&post, &rs).await {
                Ok(_) => true,
                Err(kube::Error::Api(s)) if s.code == 409 => false,
                Err(e) => log_failure("create replicaset", &name_of(&*rs), Err(e)),
            }
        }
        DeploymentAction::ScaleReplicaSet {
            name,
            replicas,
            annotations,
        } => {
            let patch = json!({ "metadata": { "annotations": annotations }, "spec": { "replicas": replicas } });
            let r = rs_api
                .patch(&name, &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ());
            log_failure("scale replicaset", &name, r)
        }
        DeploymentAction::DeleteReplicaSet { name } => {
            let r = rs_api
                .delete(&name, &DeleteParams::background())
                .await
                .map(|_| ());
            log_failure("delete replicaset", &name, r)
        }
        DeploymentAction::SetRevision(revision) => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            let patch = json!({ "metadata": { "annotations": { rollout::REVISION_ANNOTATION: revision } } });
            let r = api
                .patch(&name_of(d), &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ());
            log_failure("deployment revision", &name_of(d), r)
        }
        DeploymentAction::WriteStatus(status) => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            let patch = json!({ "status": status });
            let r = api
                .patch_status(&name_of(d), &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ());
            log_failure("deployment status", &name_of(d), r)
        }
        DeploymentAction::Event { reason, message } => {
            if !last_ok {
                return true;
            }
            ctx.events
                .emit(
                    "deployment-controller",
                    Recorder::reference(d),
                    Severity::Normal,
                    reason,
                    message,
                )
                .await;
            true
        }
    }
}

/// Executes one action; `Event`s run only when the preceding write (`last_ok`) succeeded.
async fn run_replicaset_action(
    ctx: &NodeCtx,
    rs: &ReplicaSet,
    action: ReplicaSetAction,
    last_ok: bool,
) -> bool {
    let ns = ns_of(rs);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match action {
        ReplicaSetAction::CreatePod(pod) => {
            let post = PostParams {
                field_manager: Some(REPLICASET_MANAGER.into()),
                ..Default::default()
            };
            match pods.create(&post, &pod).await {
                Ok(_) => true,
                Err(e) => {
                    let message = format!("Error creating: {e}");
                    let reference = Recorder::reference(rs);
                    ctx.events
                        .emit(
                            "replicaset-controller",
                            reference,
                            Severity::Warning,
                            "FailedCreate",
                            message,
                        )
                        .await;
                    log_failure("create pod", &name_of(&*pod), Err(e))
                }
            }
        }
        ReplicaSetAction::DeletePod { name } => {
            let r = pods
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ());
            log_failure("delete pod", &name, r)
        }
        ReplicaSetAction::WriteStatus(status) => {
            let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
            let pp = PatchParams {
                field_manager: Some(REPLICASET_MANAGER.into()),
                ..Default::default()
            };
            let patch = json!({ "status": status });
            let r = api
                .patch_status(&name_of(rs), &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ());
            log_failure("replicaset status", &name_of(rs), r)
        }
        ReplicaSetAction::Event { reason, message } => {
            if !last_ok {
                return true;
            }
            ctx.events
                .emit(
                    "replicaset-controller",
                    Recorder::reference(rs),
                    Severity::Normal,
                    reason,
                    message,
                )
                .await;
            true
        }
    }
}

async fn run_slice_action(ctx: &NodeCtx, ns: &str, action: SliceAction) {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let post = PostParams {
        field_manager: Some(ENDPOINTSLICE_MANAGER.into()),
        ..Default::default()
    };
    let r = match action {
        SliceAction::Create(slice) => api.create(&post, &slice).await.map(|_| ()),
        SliceAction::Replace(slice) => api
            .replace(&name_of(&*slice), &post, &slice)
            .await
            .map(|_| ()),
        SliceAction::Delete { name } => api
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
    };
    log_failure("endpointslice", ns, r);
}
