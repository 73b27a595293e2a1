//! The in-memory object store: every object as JSON, one cluster-wide resourceVersion
//! counter, and a bounded history of changes that watches resume from.
//!
//! All access goes through one mutex held only for the duration of a request's bookkeeping
//! (never across an `.await`). Changes are published on a broadcast channel after they are
//! recorded, so a watch that subscribes under the lock sees every change exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::registry::{Registry, ResKey};

/// How many past changes are kept for watches that resume from a resourceVersion. Older
/// versions get `410 Gone`, as etcd compaction causes on a real cluster.
pub const DEFAULT_HISTORY: usize = 10_000;

/// Buffered changes per watcher before a slow watcher is disconnected (it then re-lists).
const BROADCAST_CAPACITY: usize = 65_536;

/// Namespace and name of a stored object (`ns` is empty for cluster-scoped objects).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub ns: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One recorded change.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub res: ResKey,
    pub ns: String,
    pub type_: EventType,
    pub object: Arc<Value>,
    /// The object before this change (for MODIFIED), so selector-filtered watches can tell
    /// an object leaving or entering their selection.
    pub prev: Option<Arc<Value>>,
    /// The object's JSON, encoded once and shared by every watcher.
    encoded: OnceLock<Bytes>,
}

impl Change {
    /// The object serialised as JSON (computed on first use).
    pub fn encoded(&self) -> &Bytes {
        self.encoded
            .get_or_init(|| Bytes::from(serde_json::to_vec(&*self.object).unwrap_or_default()))
    }
}

/// The state behind the store's lock.
pub struct State {
    rv: u64,
    pub registry: Registry,
    objects: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    /// Per resource, the objects carrying each label (key and value), so a list selecting on a
    /// label reads the objects that have it instead of every object of the resource: the real
    /// server's list is fast enough that a client may list per object it reconciles.
    labelled: HashMap<ResKey, HashMap<(String, String), BTreeSet<ObjKey>>>,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    /// The resourceVersion of the oldest change a watch may still resume after.
    compacted: u64,
    sender: broadcast::Sender<Arc<Change>>,
}

pub struct Store {
    state: Mutex<State>,
}

impl Store {
    pub fn new(history_cap: usize) -> Self {
        let (sender, _) = broadcast::channel(BROADCAST_CAPACITY);
        Store {
            state: Mutex::new(State {
                rv: 1,
                registry: Registry::with_builtins(),
                objects: HashMap::new(),
                labelled: HashMap::new(),
                history: VecDeque::new(),
                history_cap: history_cap.max(1),
                compacted: 1,
                sender,
            }),
        }
    }

    /// Locks the state. A poisoned lock (a panic while holding it) is recovered: every
    /// mutation leaves the maps consistent before it can panic.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl State {
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, res: &ResKey, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(res)?
            .get(&ObjKey {
                ns: ns.to_string(),
                name: name.to_string(),
            })
            .cloned()
    }

    /// Objects of a resource, optionally in one namespace, in (namespace, name) order.
    pub fn list(&self, res: &ResKey, ns: Option<&str>) -> Vec<Arc<Value>> {
        let Some(map) = self.objects.get(res) else {
            return Vec::new();
        };
        match ns {
            Some(ns) => map
                .range(
                    ObjKey {
                        ns: ns.to_string(),
                        name: String::new(),
                    }..,
                )
                .take_while(|(k, _)| k.ns == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => map.values().cloned().collect(),
        }
    }

    /// Objects of a resource carrying the label `key=value`, optionally in one namespace, in
    /// (namespace, name) order: what [`State::list`] returns, less those without the label.
    pub fn list_labelled(
        &self,
        res: &ResKey,
        ns: Option<&str>,
        (key, value): (&str, &str),
    ) -> Vec<Arc<Value>> {
        let (Some(objects), Some(keys)) = (
            self.objects.get(res),
            self.labelled
                .get(res)
                .and_then(|l| l.get(&(key.to_string(), value.to_string()))),
        ) else {
            return Vec::new();
        };
        keys.iter()
            .filter(|k| ns.is_none_or(|ns| k.ns == ns))
            .filter_map(|k| objects.get(k).cloned())
            .collect()
    }

    /// Follows a stored object's labels in the label index: `old` replaced by `new` (either
    /// absent for a create or a removal).
    fn index_labels(
        &mut self,
        res: &ResKey,
        key: &ObjKey,
        old: Option<&Value>,
        new: Option<&Value>,
    ) {
        let labels = |v: Option<&Value>| -> Vec<(String, String)> {
            v.and_then(|v| v.get("metadata"))
                .and_then(|m| m.get("labels"))
                .and_then(Value::as_object)
                .map(|l| {
                    l.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (old, new) = (labels(old), labels(new));
        if old == new {
            return;
        }
        let index = self.labelled.entry(res.clone()).or_default();
        for label in old.iter().filter(|l| !new.contains(l)) {
            if let Some(set) = index.get_mut(label) {
                set.remove(key);
                if set.is_empty() {
                    index.remove(label);
                }
            }
        }
        for label in new.into_iter().filter(|l| !old.contains(l)) {
            index.entry(label).or_default().insert(key.clone());
        }
    }

    /// Every stored object of every resource (for garbage collection and namespace cleanup).
    pub fn all_objects(&self) -> Vec<(ResKey, Arc<Value>)> {
        let mut out = Vec::new();
        for (res, map) in &self.objects {
            for v in map.values() {
                out.push((res.clone(), v.clone()));
            }
        }
        out
    }

    pub fn count_in_namespace(&self, ns: &str) -> usize {
        self.objects
            .values()
            .map(|m| m.keys().filter(|k| k.ns == ns).count())
            .sum()
    }

    /// Stores `object` (setting its `metadata.resourceVersion`), records and publishes the
    /// change. Returns the stored object.
    pub fn put(
        &mut self,
        res: &ResKey,
        ns: &str,
        name: &str,
        mut object: Value,
        type_: EventType,
    ) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        set_rv(&mut object, rv);
        let object = Arc::new(object);
        let key = ObjKey {
            ns: ns.to_string(),
            name: name.to_string(),
        };
        let prev = self
            .objects
            .entry(res.clone())
            .or_default()
            .insert(key.clone(), object.clone());
        self.index_labels(res, &key, prev.as_deref(), Some(&object));
        self.record(res, ns, type_, object.clone(), prev);
        if crate::events::is_events_v1(res) {
            let core = crate::events::core_key();
            let exists = self.get(&core, ns, name).is_some();
            let mirrored = crate::events::to_core(&object);
            let t = if exists {
                EventType::Modified
            } else {
                EventType::Added
            };
            self.put(&core, ns, name, mirrored, t);
        }
        object
    }

    /// Removes an object; the DELETED event carries a new resourceVersion, as on a real server.
    pub fn remove(&mut self, res: &ResKey, ns: &str, name: &str) -> Option<Arc<Value>> {
        let key = ObjKey {
            ns: ns.to_string(),
            name: name.to_string(),
        };
        let removed = self.objects.get_mut(res)?.remove(&key)?;
        self.index_labels(res, &key, Some(&removed), None);
        self.rv += 1;
        let mut object = (*removed).clone();
        set_rv(&mut object, self.rv);
        let object = Arc::new(object);
        self.record(res, ns, EventType::Deleted, object.clone(), Some(removed));
        if crate::events::is_events_v1(res) {
            self.remove(&crate::events::core_key(), ns, name);
        }
        Some(object)
    }

    /// Drops every object of a resource (when its CRD is deleted), publishing DELETED events.
    pub fn remove_all(&mut self, res: &ResKey) {
        let keys: Vec<ObjKey> = self
            .objects
            .get(res)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for k in keys {
            self.remove(res, &k.ns, &k.name);
        }
    }

    fn record(
        &mut self,
        res: &ResKey,
        ns: &str,
        type_: EventType,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            res: res.clone(),
            ns: ns.to_string(),
            type_,
            object,
            prev,
            encoded: OnceLock::new(),
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.sender.send(change);
    }

    /// Changes after `rv` for a resource, or `None` when `rv` is older than the history kept.
    pub fn changes_since(&self, res: &ResKey, rv: u64) -> Option<Vec<Arc<Change>>> {
        if rv < self.compacted {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|c| c.rv > rv && &c.res == res)
                .cloned()
                .collect(),
        )
    }

    pub fn oldest_rv(&self) -> u64 {
        self.compacted
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.sender.subscribe()
    }
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> ResKey {
        ResKey {
            group: String::new(),
            plural: "configmaps".into(),
        }
    }

    #[test]
    fn every_write_bumps_the_shared_counter() {
        // resourceVersion is one counter for the whole cluster and each write gets a new value.
        let store = Store::new(10);
        let mut s = store.lock();
        let a = s.put(
            &key(),
            "ns",
            "a",
            json!({"metadata": {"name": "a"}}),
            EventType::Added,
        );
        let b = s.put(
            &key(),
            "ns",
            "b",
            json!({"metadata": {"name": "b"}}),
            EventType::Added,
        );
        let ra: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        let rb: u64 = b["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        assert!(rb > ra && ra > 1);
    }

    #[test]
    fn history_is_bounded_and_reports_too_old() {
        // A resume point older than the kept history is refused so the watcher re-lists.
        let store = Store::new(2);
        let mut s = store.lock();
        for i in 0..5 {
            s.put(
                &key(),
                "ns",
                &format!("o{i}"),
                json!({"metadata": {}}),
                EventType::Added,
            );
        }
        assert!(s.changes_since(&key(), 2).is_none());
        let recent = s.changes_since(&key(), s.current_rv() - 1);
        assert_eq!(recent.map(|v| v.len()), Some(1));
    }

    #[test]
    fn labelled_lists_follow_label_changes() {
        // The label index lists what a label selector would pick from a full list, in the same
        // order, and follows objects whose labels change or that are removed.
        let store = Store::new(10);
        let mut s = store.lock();
        let labelled = |name: &str, app: &str| json!({"metadata": {"name": name, "labels": {"app": app, "tier": "web"}}});
        s.put(&key(), "b", "x", labelled("x", "shop"), EventType::Added);
        s.put(&key(), "a", "y", labelled("y", "shop"), EventType::Added);
        s.put(&key(), "a", "x", labelled("x", "shop"), EventType::Added);
        s.put(&key(), "a", "z", labelled("z", "blog"), EventType::Added);
        let names = |objs: Vec<Arc<Value>>| -> Vec<String> {
            objs.iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(
            names(s.list_labelled(&key(), Some("a"), ("app", "shop"))),
            ["x", "y"]
        );
        assert_eq!(
            names(s.list_labelled(&key(), None, ("app", "shop"))),
            ["x", "y", "x"]
        );
        s.put(&key(), "a", "y", labelled("y", "blog"), EventType::Modified);
        s.remove(&key(), "a", "x");
        assert!(s
            .list_labelled(&key(), Some("a"), ("app", "shop"))
            .is_empty());
        assert_eq!(
            names(s.list_labelled(&key(), Some("a"), ("app", "blog"))),
            ["y", "z"]
        );
        assert_eq!(s.list_labelled(&key(), None, ("tier", "web")).len(), 3);
        assert!(s.list_labelled(&key(), None, ("app", "none")).is_empty());
    }

    #[test]
    fn list_by_namespace_is_sorted_and_scoped() {
        // Listing a namespace returns only its objects, ordered by name.
        let store = Store::new(10);
        let mut s = store.lock();
        s.put(&key(), "b", "z", json!({"metadata": {}}), EventType::Added);
        s.put(&key(), "a", "y", json!({"metadata": {}}), EventType::Added);
        s.put(&key(), "a", "x", json!({"metadata": {}}), EventType::Added);
        assert_eq!(s.list(&key(), Some("a")).len(), 2);
        assert_eq!(s.list(&key(), None).len(), 3);
    }
}
