//! Feeds the engine: the replica's shared MicroService cache and a reflector on Flotilla's pods
//! (label `app.kubernetes.io/managed-by=flotilla`), turned into an `Inventory` value.
//!
//! Pods are stripped to what the engine reads (labels, pod IP, Ready condition) before they enter
//! the cache, so the cache stays small with tens of thousands of pods. Nothing is published until
//! both caches have synced, so a half-listed cluster never looks like a service without pods.
//! Rebuilds are coalesced: at most one per `REBUILD_EVERY`.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use kube::api::ObjectMeta;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::watch;

use flotilla_crds::labels;

use crate::cache::MicroServices;

use super::inventory::Inventory;

/// Upper bound on how often the inventory is rebuilt while the cluster changes.
const REBUILD_EVERY: Duration = Duration::from_millis(50);

/// Keeps of a pod what `Inventory::build` reads: name, namespace, uid, labels, whether it is
/// being deleted, its IP and its Ready condition's status.
fn strip_pod(p: &mut Pod) {
    let meta = std::mem::take(&mut p.metadata);
    p.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    };
    p.spec = None;
    p.status = p.status.take().map(|s| {
        let ready = s
            .conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready");
        PodStatus {
            pod_ip: s.pod_ip,
            conditions: ready.map(|c| {
                vec![PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..PodCondition::default()
                }]
            }),
            ..PodStatus::default()
        }
    });
}

/// Starts the reflectors; the returned receiver always holds the latest inventory.
pub fn spawn(
    client: Client,
    namespace: Option<String>,
    microservices: MicroServices,
) -> (watch::Receiver<Arc<Inventory>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(Inventory::default()));
    let handle = tokio::spawn(run(client, namespace, microservices, tx));
    (rx, handle)
}

async fn run(
    client: Client,
    namespace: Option<String>,
    microservices: MicroServices,
    tx: watch::Sender<Arc<Inventory>>,
) {
    let pods: Api<Pod> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let (pod_store, pod_writer) = reflector::store();
    let (ms_store, ms_synced) = (microservices.store(), microservices.synced());
    let pod_cfg = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ));
    let pod_events = watcher(pods, pod_cfg)
        .modify(strip_pod)
        .default_backoff()
        .reflect(pod_writer)
        .map(|e| e.map(|_| ()).map_err(|e| e.to_string()));
    let ms_events = microservices.changes().map(|_| Ok(()));
    let mut events = std::pin::pin!(futures::stream::select(pod_events, ms_events));
    let mut tick = tokio::time::interval(REBUILD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    let mut synced = false;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                None => break,
                Some(Ok(())) => dirty = true,
                Some(Err(e)) => tracing::warn!(error = %e, "failover watch error; retrying"),
            },
            _ = tick.tick() => {
                if !synced {
                    synced = pod_store.wait_until_ready().now_or_never().is_some()
                        && ms_synced.is_set();
                }
                if synced && dirty {
                    dirty = false;
                    let services = ms_store.state();
                    let pods = pod_store.state();
                    let inv = Inventory::build(
                        services.iter().map(AsRef::as_ref),
                        pods.iter().map(AsRef::as_ref),
                    );
                    tx.send_if_modified(|cur| {
                        if **cur == inv {
                            false
                        } else {
                            *cur = Arc::new(inv);
                            true
                        }
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::inventory::pod_info;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::collections::BTreeMap;

    fn pod(ready: &str, deleting: bool) -> Pod {
        let labels = BTreeMap::from([
            (labels::INSTANCE.to_string(), "users".to_string()),
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
            (
                format!("{}fallback", labels::SERVES_PREFIX),
                "true".to_string(),
            ),
        ]);
        let condition = |type_: &str, status: &str| PodCondition {
            type_: type_.into(),
            status: status.into(),
            message: Some("containers with unready status: [app]".into()),
            reason: Some("ContainersNotReady".into()),
            ..PodCondition::default()
        };
        Pod {
            metadata: ObjectMeta {
                name: Some("users-1".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([("a".into(), "b".into())])),
                generate_name: Some("users-".into()),
                deletion_timestamp: deleting.then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
                ..ObjectMeta::default()
            },
            spec: Some(Default::default()),
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.7".into()),
                host_ip: Some("192.168.0.2".into()),
                phase: Some("Running".into()),
                conditions: Some(vec![
                    condition("PodScheduled", "True"),
                    condition("Ready", ready),
                    condition("ContainersReady", ready),
                ]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn a_stripped_pod_reads_as_the_whole_pod_does() {
        for (ready, deleting) in [("True", false), ("False", false), ("True", true)] {
            let whole = pod(ready, deleting);
            let mut stripped = whole.clone();
            strip_pod(&mut stripped);
            let info = pod_info(&whole);
            assert_eq!(info.is_some(), !deleting);
            assert_eq!(
                pod_info(&stripped),
                info,
                "ready {ready}, deleting {deleting}"
            );
            assert!(stripped.spec.is_none() && stripped.metadata.annotations.is_none());
            let conditions = stripped
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default();
            assert!(conditions.len() <= 1);
        }
    }
}
