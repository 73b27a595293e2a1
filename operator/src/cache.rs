//! The caches the pipeline reads instead of asking the API server: the MicroServices and the
//! children Flotilla manages, and the one "synced" signal that says a cache has completed its
//! initial list. Both the controller and the failover source wait on [`Synced`], so neither acts
//! on a half-listed cluster. No writes here.
//!
//! Each replica opens ONE MicroService watch ([`MicroServices`]), shared by the controller, its
//! dependency trigger and the failover source. kube-runtime's `store_shared` subscribers are not
//! used for this: a subscriber that is not polled holds the watch back once its buffer is full
//! (the controller on a standby replica never polls), and they are not told about deletions,
//! which the dependency trigger needs. Instead the watch feeds a broadcast of [`Change`]s that
//! never blocks it; a consumer that falls behind is told to look at everything again.

use std::future::Future;
use std::sync::Arc;

use flotilla_crds::MicroService;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::metrics::Metrics;

/// Changes buffered per consumer before it is told to resynchronise. A consumer falls this far
/// behind only when thousands of MicroServices change at once.
const CHANGE_BUFFER: usize = 1024;

/// Whether one cache has completed its initial list, observable by any number of tasks.
///
/// kube-runtime's `Store::wait_until_ready` wakes only the task that polled it last, so two tasks
/// waiting on the same store at once (the readiness reporter and a reconcile) can wait forever.
/// This flag is set from the watch stream itself, after the reflector has applied the event.
#[derive(Clone, Debug)]
pub struct Synced(tokio::sync::watch::Receiver<bool>);

impl Synced {
    /// A flag and the setter to call on the stream's `InitDone` event.
    pub fn new() -> (SyncedSetter, Synced) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (SyncedSetter(Arc::new(tx)), Synced(rx))
    }

    /// Waits until the flag is set; false if its setter is gone first.
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        let synced = rx.wait_for(|synced| *synced).await.is_ok();
        synced
    }

    /// Whether the flag is set now.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

/// Sets a [`Synced`] flag; cloned into the watch stream of the cache it describes.
#[derive(Clone, Debug)]
pub struct SyncedSetter(Arc<tokio::sync::watch::Sender<bool>>);

impl SyncedSetter {
    /// Marks the cache as listed.
    pub fn set(&self) {
        self.0.send_replace(true);
    }
}

/// The reconciler's caches: MicroServices and the children Flotilla manages (label-filtered).
#[derive(Clone)]
pub struct Stores {
    /// All watched MicroServices.
    pub microservices: Store<MicroService>,
    /// Deployments labelled `managed-by: flotilla`.
    pub deployments: Store<Deployment>,
    /// Services labelled `managed-by: flotilla`.
    pub services: Store<Service>,
    /// ConfigMaps labelled `managed-by: flotilla`.
    pub config_maps: Store<ConfigMap>,
    /// HPAs labelled `managed-by: flotilla`.
    pub hpas: Store<HorizontalPodAutoscaler>,
    /// One flag per cache, set when its initial list is in.
    pub synced: Vec<Synced>,
}

impl Stores {
    /// Waits until every cache has completed its initial list.
    pub async fn ready(&self) -> bool {
        futures::future::join_all(self.synced.iter().map(Synced::wait))
            .await
            .into_iter()
            .all(|ok| ok)
    }

    /// Publishes the cache sizes as `flotilla_managed_objects`.
    pub fn record_sizes(&self, m: &Metrics) {
        for (kind, n) in [
            ("MicroService", self.microservices.len()),
            ("Deployment", self.deployments.len()),
            ("Service", self.services.len()),
            ("ConfigMap", self.config_maps.len()),
            ("HorizontalPodAutoscaler", self.hpas.len()),
        ] {
            m.managed_objects
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// One change seen by the MicroService watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created or modified.
    Applied(ObjectRef<MicroService>),
    /// Deleted.
    Deleted(ObjectRef<MicroService>),
    /// The cache was (re)listed, or this consumer fell behind: anything may have changed.
    Resynced,
}

/// The replica's one MicroService cache and the stream of its changes.
#[derive(Clone)]
pub struct MicroServices {
    store: Store<MicroService>,
    synced: Synced,
    changes: broadcast::Sender<Change>,
}

impl MicroServices {
    /// Starts nothing: returns the cache and the future that runs its watch (spawn it).
    pub fn watch(
        client: Client,
        namespace: Option<&str>,
    ) -> (MicroServices, impl Future<Output = ()> + Send + 'static) {
        let api: Api<MicroService> = match namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let (store, writer) = reflector::store();
        let (set_synced, synced) = Synced::new();
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let tx = changes.clone();
        let run = async move {
            // Managed fields are read by nobody here and are the largest part of a cached
            // MicroService; they are dropped before the cache keeps it.
            let events = watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .modify(|m: &mut MicroService| m.metadata.managed_fields = None)
                .reflect(writer);
            let mut events = std::pin::pin!(events);
            while let Some(ev) = events.next().await {
                let change = match ev {
                    Ok(watcher::Event::Apply(o)) => Change::Applied(ObjectRef::from_obj(&o)),
                    Ok(watcher::Event::Delete(o)) => Change::Deleted(ObjectRef::from_obj(&o)),
                    Ok(watcher::Event::InitDone) => {
                        set_synced.set();
                        Change::Resynced
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "MicroService watch failed; retrying");
                        continue;
                    }
                };
                // No receiver (nobody subscribed yet) is fine: late subscribers start from the
                // cache.
                let _ = tx.send(change);
            }
        };
        let cache = MicroServices {
            store,
            synced,
            changes,
        };
        (cache, run)
    }

    /// The cache.
    pub fn store(&self) -> Store<MicroService> {
        self.store.clone()
    }

    /// Set once the initial list is in.
    pub fn synced(&self) -> Synced {
        self.synced.clone()
    }

    /// Every change from now on; falling behind yields [`Change::Resynced`].
    pub fn changes(&self) -> impl Stream<Item = Change> + Send + 'static {
        BroadcastStream::new(self.changes.subscribe()).map(|c| c.unwrap_or(Change::Resynced))
    }

    /// The objects to reconcile: every cached MicroService once the cache has synced, then each
    /// one that changes (all of them again after a resync). For `Controller::for_shared_stream`.
    pub fn objects(&self) -> impl Stream<Item = Arc<MicroService>> + Send + 'static {
        // Subscribe before reading the cache, so nothing falls between the two.
        let changes = self.changes();
        let (store, synced) = (self.store.clone(), self.synced.clone());
        let initial = store.clone();
        let first = futures::stream::once(async move {
            synced.wait().await;
            futures::stream::iter(initial.state())
        })
        .flatten();
        let rest = changes.flat_map(move |c| {
            let objs = match c {
                Change::Applied(r) => store.get(&r).into_iter().collect(),
                Change::Deleted(_) => Vec::new(),
                Change::Resynced => store.state(),
            };
            futures::stream::iter(objs)
        });
        first.chain(rest)
    }
}
