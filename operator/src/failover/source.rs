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
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::watch;

use flotilla_crds::labels;

use crate::cache::MicroServices;

use super::inventory::Inventory;

/// Upper bound on how often the inventory is rebuilt while the cluster changes.
const REBUILD_EVERY: Duration = Duration::from_millis(50);

fn strip_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.metadata.owner_references = None;
    p.spec = None;
    if let Some(s) = p.status.as_mut() {
        s.container_statuses = None;
        s.init_container_statuses = None;
        s.ephemeral_container_statuses = None;
    }
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
