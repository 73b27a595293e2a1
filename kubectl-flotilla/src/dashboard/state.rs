//! What the dashboard knows of the cluster: the MicroServices, Flotilla's pods and the Events
//! about MicroServices in its scope, as the watches last reported them, the figures sampled from
//! each MicroService's status over time, and the watches' errors. Every change bumps a counter
//! that the page's event streams wait on. No client here: `watch` feeds it, `routes` reads
//! copies ([`Fleet::snapshot`]), tests feed it watcher events by hand.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio::sync::watch;

use super::timeline::History;
use flotilla_crds::MicroService;

/// The three watches, named as their errors are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feed {
    MicroServices,
    Pods,
    Events,
}

impl Feed {
    /// The resource, as the page names it in an error.
    pub fn as_str(self) -> &'static str {
        match self {
            Feed::MicroServices => "microservices",
            Feed::Pods => "pods",
            Feed::Events => "events",
        }
    }
}

/// A watch that is failing: what the API server said, and whether it refused the user (RBAC).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedError {
    pub message: String,
    pub forbidden: bool,
}

/// Objects keyed by namespace and name, replaced as a whole when a watch (re)lists.
#[derive(Debug, Clone)]
struct Cache<T> {
    items: BTreeMap<(String, String), T>,
    /// The objects of a relist in progress.
    relist: Option<BTreeMap<(String, String), T>>,
    /// A first list has completed.
    synced: bool,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            items: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<T: Clone> Cache<T> {
    /// Applies one watcher event whose objects were mapped with `key` (`None`: leave it out).
    fn apply<K>(
        &mut self,
        event: watcher::Event<K>,
        mut key: impl FnMut(K) -> Option<((String, String), T)>,
    ) {
        match event {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(k) => {
                if let (Some(relist), Some((key, value))) = (self.relist.as_mut(), key(k)) {
                    relist.insert(key, value);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = self.relist.take() {
                    self.items = relist;
                }
                self.synced = true;
            }
            watcher::Event::Apply(k) => {
                if let Some((key, value)) = key(k) {
                    self.items.insert(key, value);
                }
            }
            watcher::Event::Delete(k) => {
                if let Some((key, _)) = key(k) {
                    self.items.remove(&key);
                }
            }
        }
    }

    fn values(&self) -> Vec<T> {
        self.items.values().cloned().collect()
    }
}

#[derive(Debug, Default)]
struct State {
    msvcs: Cache<MicroService>,
    pods: Cache<Pod>,
    events: Cache<Event>,
    history: History,
    errors: BTreeMap<Feed, FeedError>,
}

/// A copy of what the dashboard knows, for computing views.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `namespace "default"` or `all namespaces`.
    pub scope: String,
    pub msvcs: Vec<MicroService>,
    pub pods: Vec<Pod>,
    pub events: Vec<Event>,
    pub history: History,
    /// One line per failing watch.
    pub errors: Vec<String>,
}

/// The dashboard's shared state.
#[derive(Clone)]
pub struct Fleet {
    scope: String,
    state: Arc<Mutex<State>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Fleet {
    /// An empty state for `scope` (as the page shows it, e.g. `namespace "default"`).
    pub fn new(scope: String) -> Fleet {
        Fleet {
            scope,
            state: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Applies an event of the MicroService watch and samples the figures of every
    /// MicroService it brings.
    pub fn on_msvc(&self, event: watcher::Event<MicroService>, now: Timestamp) {
        let mut state = self.lock();
        let State {
            msvcs,
            history,
            errors,
            ..
        } = &mut *state;
        msvcs.apply(event, |m| {
            history.record(&m, now);
            Some((key(&m), m))
        });
        errors.remove(&Feed::MicroServices);
        drop(state);
        self.bump();
    }

    /// Applies an event of the pod watch.
    pub fn on_pod(&self, event: watcher::Event<Pod>) {
        let mut state = self.lock();
        state.pods.apply(event, |p| Some((key(&p), p)));
        state.errors.remove(&Feed::Pods);
        drop(state);
        self.bump();
    }

    /// Applies an event of the Event watch, keeping only Events about MicroServices.
    pub fn on_event(&self, event: watcher::Event<Event>) {
        let mut state = self.lock();
        state.events.apply(event, |e| {
            let about_msvc = e
                .regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(flotilla_crds::KIND));
            about_msvc.then(|| (key(&e), e))
        });
        state.errors.remove(&Feed::Events);
        drop(state);
        self.bump();
    }

    /// Records that the watch `feed` is failing (it retries with a back-off).
    pub fn on_error(&self, feed: Feed, error: FeedError) {
        let mut state = self.lock();
        if state.errors.get(&feed) == Some(&error) {
            return;
        }
        state.errors.insert(feed, error);
        drop(state);
        self.bump();
    }

    /// Whether every watch has listed once.
    pub fn synced(&self) -> bool {
        let state = self.lock();
        state.msvcs.synced && state.pods.synced && state.events.synced
    }

    /// The first watch the API server refuses, if any.
    pub fn forbidden(&self) -> Option<(Feed, String)> {
        let state = self.lock();
        state
            .errors
            .iter()
            .find(|(_, e)| e.forbidden)
            .map(|(f, e)| (*f, e.message.clone()))
    }

    /// A copy of everything known now.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        Snapshot {
            scope: self.scope.clone(),
            msvcs: state.msvcs.values(),
            pods: state.pods.values(),
            events: state.events.values(),
            history: state.history.clone(),
            errors: state
                .errors
                .iter()
                .map(|(f, e)| format!("watch on {}: {}", f.as_str(), e.message))
                .collect(),
        }
    }
}

fn key<K: ResourceExt>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_crds::MicroServiceSpec;

    fn msvc(name: &str, ready: i32) -> MicroService {
        let mut m = MicroService::new(name, MicroServiceSpec::with_image("flotilla/users:0.1.0"));
        m.metadata.namespace = Some("default".into());
        m.status = Some(flotilla_crds::MicroServiceStatus {
            ready_replicas: Some(ready),
            ..Default::default()
        });
        m
    }

    fn names(f: &Fleet) -> Vec<String> {
        f.snapshot().msvcs.iter().map(|m| m.name_any()).collect()
    }

    /// A relist replaces what was known (a MicroService deleted while the watch was down is
    /// gone), changes are announced, and figures that change are sampled once each.
    #[test]
    fn relists_replace_and_changes_are_sampled() {
        let f = Fleet::new("namespace \"default\"".into());
        let mut rx = f.subscribe();
        let t = Timestamp::UNIX_EPOCH;
        f.on_msvc(watcher::Event::Init, t);
        f.on_msvc(watcher::Event::InitApply(msvc("users", 1)), t);
        f.on_msvc(watcher::Event::InitApply(msvc("auth", 1)), t);
        assert!(
            names(&f).is_empty(),
            "nothing shown before the list completes"
        );
        f.on_msvc(watcher::Event::InitDone, t);
        assert_eq!(names(&f), ["auth", "users"]);
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        f.on_msvc(watcher::Event::Apply(msvc("users", 2)), t);
        f.on_msvc(watcher::Event::Apply(msvc("users", 2)), t);
        assert!(rx.has_changed().unwrap_or(false));
        f.on_msvc(watcher::Event::Init, t);
        f.on_msvc(watcher::Event::InitApply(msvc("users", 2)), t);
        f.on_msvc(watcher::Event::InitDone, t);
        assert_eq!(names(&f), ["users"]);
        let timeline = super::super::timeline::timeline(&[], &f.snapshot().history, None);
        let users = timeline.series.iter().find(|s| s.service == "users");
        let ready: Vec<Option<i32>> = users
            .map(|s| s.samples.iter().map(|x| x.ready_replicas).collect())
            .unwrap_or_default();
        assert_eq!(
            ready,
            [Some(1), Some(2)],
            "one sample per change of the figures"
        );
    }

    /// Only Events about MicroServices are kept; a watch error is reported until the watch
    /// works again, and a refusal is told apart.
    #[test]
    fn events_are_filtered_and_errors_clear() {
        let f = Fleet::new("all namespaces".into());
        let event = |name: &str, kind: &str| Event {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            regarding: Some(k8s_openapi::api::core::v1::ObjectReference {
                kind: Some(kind.into()),
                name: Some("users".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        f.on_event(watcher::Event::Apply(event("a", "MicroService")));
        f.on_event(watcher::Event::Apply(event("b", "Pod")));
        assert_eq!(f.snapshot().events.len(), 1);
        f.on_error(
            Feed::Pods,
            FeedError {
                message: "pods is forbidden".into(),
                forbidden: true,
            },
        );
        assert_eq!(f.forbidden().map(|(feed, _)| feed), Some(Feed::Pods));
        assert_eq!(f.snapshot().errors, ["watch on pods: pods is forbidden"]);
        f.on_pod(watcher::Event::InitDone);
        assert!(f.snapshot().errors.is_empty());
        assert!(
            !f.synced(),
            "the MicroService and Event watches have not listed yet"
        );
    }
}
