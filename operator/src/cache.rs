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

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use flotilla_crds::{MicroService, MicroServiceStatus};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::BroadcastStream;

use crate::metrics::Metrics;

mod children;
pub use children::{child_store, ChildStore, ChildWriter};

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
    pub deployments: ChildStore<Deployment>,
    /// Services labelled `managed-by: flotilla`.
    pub services: ChildStore<Service>,
    /// ConfigMaps labelled `managed-by: flotilla`.
    pub config_maps: ChildStore<ConfigMap>,
    /// HPAs labelled `managed-by: flotilla`.
    pub hpas: ChildStore<HorizontalPodAutoscaler>,
    /// One flag per cache, set when its initial list is in.
    pub synced: Vec<Synced>,
    /// The reconciler's own writes that the caches may not show yet.
    pub own_writes: OwnWrites,
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

/// Which object a write was made to: kind, namespace, name.
type WriteKey = (&'static str, String, String);

/// One write of the reconciler: the resourceVersion it left, and for a status write the
/// resourceVersion it was computed from and the status written.
#[derive(Debug)]
struct OwnWrite {
    after: String,
    status: Option<(Option<String>, Box<MicroServiceStatus>)>,
}

/// Writes sent and not answered yet to one object: the resourceVersions its watch events showed
/// meanwhile, and the MicroService to wake should one of them not be the write's echo.
#[derive(Debug)]
struct InFlight {
    writes: u32,
    seen: Vec<String>,
    owner: ObjectRef<MicroService>,
}

#[derive(Debug, Default)]
struct Writes {
    /// Answered writes whose echo has not been seen yet.
    answered: HashMap<WriteKey, OwnWrite>,
    /// Writes sent and not answered yet.
    in_flight: HashMap<WriteKey, InFlight>,
    /// Where a MicroService is sent to be reconciled again (the controller's `reconcile_on`);
    /// `None`, or a receiver that is gone, wakes nobody.
    wake: Option<mpsc::UnboundedSender<ObjectRef<MicroService>>>,
}

/// The reconciler's own writes, so that their watch events (echoes) do not trigger another
/// reconcile, and a reconcile that starts before the cache shows its predecessor's status write
/// does not write the same status again.
///
/// An event is an echo only when the object's resourceVersion is exactly the one a write of
/// ours returned: the object is then in the state that write left, and nothing else changed
/// since. Any other writer's change (a new generation, an annotation, `status.failover`) gives
/// another resourceVersion and triggers a reconcile as before. One entry per object at most,
/// replaced by the next write and dropped when its echo arrives or the object is deleted.
///
/// The echo often arrives before the write's answer. A write is therefore announced before it is
/// sent ([`OwnWrites::sending`]); the watch events of its object that arrive until the answer are
/// held, and the answer sorts them: the one with the resourceVersion the write returned was its
/// echo, any other (someone else's change meanwhile, or every one of them when the write failed)
/// wakes the owning MicroService, as its event would have.
#[derive(Clone, Debug, Default)]
pub struct OwnWrites(Arc<Mutex<Writes>>);

fn write_key<K: Resource<DynamicType = ()>>(obj: &K) -> WriteKey {
    (
        static_kind(K::kind(&())),
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
    )
}

/// The kind as a static string (kinds are static in k8s-openapi and the CRD crate).
fn static_kind(kind: std::borrow::Cow<'static, str>) -> &'static str {
    match kind {
        std::borrow::Cow::Borrowed(k) => k,
        std::borrow::Cow::Owned(_) => "object",
    }
}

/// A write of the reconciler between sending and its answer; see [`OwnWrites::sending`]. Dropped
/// without an answer (the write failed, or made no change), every event held meanwhile wakes the
/// owner.
#[must_use = "a write in flight holds its object's watch events until it is answered"]
pub struct Flight {
    own: OwnWrites,
    key: WriteKey,
    finished: bool,
}

impl Flight {
    /// The write's answer is `written`: records it as [`OwnWrites::child`] does, unless its
    /// echo already came while it was in flight.
    pub fn child<K: Resource<DynamicType = ()>>(mut self, written: &K) {
        self.finished = true;
        let after = written.resource_version();
        if !self.own.land(&self.key, after.as_deref()) {
            self.own.child(written);
        }
    }

    /// The status write's answer is `written`: records it as [`OwnWrites::status`] does,
    /// unless its echo already came (the cache shows it then, and nothing stands in for it).
    pub fn status(
        mut self,
        before: &MicroService,
        written: &MicroService,
        status: &MicroServiceStatus,
    ) {
        self.finished = true;
        let after = written.resource_version();
        if !self.own.land(&self.key, after.as_deref()) {
            self.own.status(before, written, status);
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if !self.finished {
            self.own.land(&self.key, None);
        }
    }
}

impl OwnWrites {
    /// Writes whose foreign events wake their owner through the returned receiver (feed it to
    /// the controller).
    pub fn with_wakes() -> (OwnWrites, mpsc::UnboundedReceiver<ObjectRef<MicroService>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let own = OwnWrites(Arc::new(Mutex::new(Writes {
            wake: Some(tx),
            ..Writes::default()
        })));
        (own, rx)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Writes> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Announces a write of `K` `ns/name` on behalf of `owner`, about to be sent; its watch
    /// events are held until the returned [`Flight`] gets the answer or is dropped.
    pub fn sending<K: Resource<DynamicType = ()>>(
        &self,
        ns: &str,
        name: &str,
        owner: ObjectRef<MicroService>,
    ) -> Flight {
        let key = (static_kind(K::kind(&())), ns.to_string(), name.to_string());
        self.map()
            .in_flight
            .entry(key.clone())
            .or_insert_with(|| InFlight {
                writes: 0,
                seen: Vec::new(),
                owner,
            })
            .writes += 1;
        Flight {
            own: self.clone(),
            key,
            finished: false,
        }
    }

    /// One write to `key` was answered with resourceVersion `after` (`None`: no change made);
    /// sorts the events held meanwhile. Whether the write's echo was among them.
    fn land(&self, key: &WriteKey, after: Option<&str>) -> bool {
        let mut writes = self.map();
        let Some(flight) = writes.in_flight.get_mut(key) else {
            return false;
        };
        flight.writes = flight.writes.saturating_sub(1);
        let echo = after.and_then(|a| flight.seen.iter().position(|rv| rv == a));
        if let Some(i) = echo {
            flight.seen.remove(i);
        }
        if flight.writes > 0 {
            // Other writes to the object are still out; they sort the rest.
            return echo.is_some();
        }
        let foreign = !flight.seen.is_empty();
        let owner = flight.owner.clone();
        writes.in_flight.remove(key);
        if foreign {
            if let Some(wake) = &writes.wake {
                let _ = wake.send(owner);
            }
        }
        echo.is_some()
    }

    /// Records a child write whose response is `written`.
    pub fn child<K: Resource<DynamicType = ()>>(&self, written: &K) {
        if let Some(after) = written.resource_version() {
            self.map().answered.insert(
                write_key(written),
                OwnWrite {
                    after,
                    status: None,
                },
            );
        }
    }

    /// Records a status write: `before` is the MicroService the status was computed from,
    /// `written` the server's response.
    pub fn status(
        &self,
        before: &MicroService,
        written: &MicroService,
        status: &MicroServiceStatus,
    ) {
        if let Some(after) = written.resource_version() {
            let status = Some((before.resource_version(), Box::new(status.clone())));
            self.map()
                .answered
                .insert(write_key(written), OwnWrite { after, status });
        }
    }

    /// Whether `obj` is exactly in the state one of our writes left it (its watch event is
    /// that write's echo); the write is forgotten once its echo is seen. While a write to the
    /// object is in flight, its events are held (counted as echoes here) until the answer
    /// sorts them.
    pub fn is_echo<K: Resource<DynamicType = ()>>(&self, obj: &K) -> bool {
        let Some(rv) = obj.meta().resource_version.as_deref() else {
            return false;
        };
        let key = write_key(obj);
        let mut writes = self.map();
        if let Some(flight) = writes.in_flight.get_mut(&key) {
            flight.seen.push(rv.to_string());
            return true;
        }
        let echo = writes.answered.get(&key).is_some_and(|w| w.after == rv);
        if echo {
            writes.answered.remove(&key);
        }
        echo
    }

    /// The status our last write gave `ms`, when `ms` (from the cache) is still the object that
    /// status was computed from, i.e. the cache has not caught up with the write yet.
    pub fn unseen_status(&self, ms: &MicroService) -> Option<MicroServiceStatus> {
        let rv = ms.meta().resource_version.as_deref()?;
        let writes = self.map();
        let (before, status) = writes.answered.get(&write_key(ms))?.status.as_ref()?;
        (before.as_deref() == Some(rv)).then(|| status.as_ref().clone())
    }

    /// Forgets the writes to a deleted object.
    pub fn forget<K: Resource<DynamicType = ()>>(&self, obj: &ObjectRef<K>) {
        let key = (
            static_kind(K::kind(&())),
            obj.namespace.clone().unwrap_or_default(),
            obj.name.clone(),
        );
        self.map().answered.remove(&key);
    }

    /// How many answered writes await their echo.
    pub fn len(&self) -> usize {
        self.map().answered.len()
    }

    /// Whether no write is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    /// one that changes (all of them again after a resync), except a change that is only the
    /// echo of one of `own`'s writes. For `Controller::for_shared_stream`.
    pub fn objects(
        &self,
        own: OwnWrites,
    ) -> impl Stream<Item = Arc<MicroService>> + Send + 'static {
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
                Change::Applied(r) => store
                    .get(&r)
                    .filter(|ms| !own.is_echo(ms.as_ref()))
                    .into_iter()
                    .collect(),
                Change::Deleted(r) => {
                    own.forget(&r);
                    Vec::new()
                }
                Change::Resynced => store.state(),
            };
            futures::stream::iter(objs)
        });
        first.chain(rest)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_crds::MicroServiceSpec;
    use k8s_openapi::api::core::v1::Service;

    use super::*;

    fn ms(rv: &str) -> MicroService {
        let mut ms = MicroService::new("users", MicroServiceSpec::with_image("users:1"));
        ms.metadata.namespace = Some("shop".into());
        ms.metadata.resource_version = Some(rv.into());
        ms
    }

    /// Only the exact state a write of ours left is an echo, once; another writer's later
    /// change to the same object is not, and a deleted object's writes are forgotten.
    #[test]
    fn only_the_state_our_write_left_is_an_echo() {
        let own = OwnWrites::default();
        let mut svc = Service::default();
        svc.metadata.name = Some("users".into());
        svc.metadata.namespace = Some("shop".into());
        svc.metadata.resource_version = Some("7".into());
        own.child(&svc);
        let mut later = svc.clone();
        later.metadata.resource_version = Some("8".into());
        assert!(!own.is_echo(&later), "someone else's change");
        assert!(own.is_echo(&svc));
        assert!(!own.is_echo(&svc), "an echo is consumed");
        own.child(&svc);
        own.forget(&ObjectRef::from_obj(&svc));
        assert!(own.is_empty());
    }

    fn svc(rv: &str) -> Service {
        let mut svc = Service::default();
        svc.metadata.name = Some("users".into());
        svc.metadata.namespace = Some("shop".into());
        svc.metadata.resource_version = Some(rv.into());
        svc
    }

    fn owner() -> ObjectRef<MicroService> {
        ObjectRef::new("users").within("shop")
    }

    /// The echo of a write that arrives before the write's answer is held, then recognised by
    /// the answer: it wakes nobody, and nothing is left waiting for it.
    #[test]
    fn an_echo_ahead_of_its_answer_wakes_nobody() {
        let (own, mut wakes) = OwnWrites::with_wakes();
        let flight = own.sending::<Service>("shop", "users", owner());
        assert!(own.is_echo(&svc("7")), "held while the write is in flight");
        flight.child(&svc("7"));
        assert!(wakes.try_recv().is_err());
        assert!(own.is_empty(), "the echo was already seen");
        assert!(!own.is_echo(&svc("8")), "later changes are someone else's");
    }

    /// Someone else's change that arrives while our write is in flight wakes the owner once the
    /// answer shows it was not our echo; our echo arriving later is still recognised.
    #[test]
    fn a_foreign_change_in_flight_wakes_the_owner() {
        let (own, mut wakes) = OwnWrites::with_wakes();
        let flight = own.sending::<Service>("shop", "users", owner());
        assert!(own.is_echo(&svc("6")));
        flight.child(&svc("7"));
        assert_eq!(wakes.try_recv().ok(), Some(owner()));
        assert!(own.is_echo(&svc("7")));
    }

    /// A write that fails (or changes nothing) has no echo: every event held meanwhile wakes
    /// the owner.
    #[test]
    fn events_held_by_a_failed_write_wake_the_owner() {
        let (own, mut wakes) = OwnWrites::with_wakes();
        let flight = own.sending::<Service>("shop", "users", owner());
        assert!(own.is_echo(&svc("6")));
        drop(flight);
        assert_eq!(wakes.try_recv().ok(), Some(owner()));
        assert!(!own.is_echo(&svc("7")), "nothing in flight any more");
        let quiet = own.sending::<Service>("shop", "users", owner());
        drop(quiet);
        assert!(wakes.try_recv().is_err(), "nothing held, nobody woken");
    }

    /// A status write whose echo came before its answer leaves no status standing in: the
    /// cache already shows it.
    #[test]
    fn a_status_echo_ahead_of_its_answer_leaves_nothing_to_stand_in() {
        let (own, mut wakes) = OwnWrites::with_wakes();
        let status = MicroServiceStatus::default();
        let (before, after) = (ms("10"), ms("11"));
        let flight = own.sending::<MicroService>("shop", "users", ObjectRef::from_obj(&before));
        assert!(own.is_echo(&after));
        flight.status(&before, &after, &status);
        assert!(wakes.try_recv().is_err());
        assert_eq!(own.unseen_status(&before), None);
    }

    /// A MicroService the cache still shows as it was before our status write yields the
    /// status written; once the cache has moved on (our echo or anyone's change), nothing.
    #[test]
    fn the_written_status_stands_in_until_the_cache_catches_up() {
        let own = OwnWrites::default();
        let status = MicroServiceStatus {
            observed_generation: Some(1),
            ..MicroServiceStatus::default()
        };
        let (before, after) = (ms("10"), ms("11"));
        own.status(&before, &after, &status);
        assert_eq!(own.unseen_status(&before), Some(status));
        assert_eq!(own.unseen_status(&after), None);
        assert_eq!(own.unseen_status(&ms("12")), None);
        assert!(own.is_echo(&after));
        assert_eq!(own.unseen_status(&before), None, "forgotten with its echo");
    }
}
