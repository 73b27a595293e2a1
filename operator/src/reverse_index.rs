//! A reverse index kept from the MicroService cache's changes: from each thing MicroServices
//! refer to (the services they depend on, the Secrets and ConfigMaps their env reads) to the
//! MicroServices that refer to it, so that finding who to wake when it changes costs a map
//! lookup, not a scan of the cache. Pure: the caller feeds it changes and the cache.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use flotilla_crds::MicroService;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::cache::Change;

type MsRef = ObjectRef<MicroService>;

/// Which MicroServices refer to which `K`s.
pub struct ReverseIndex<K> {
    /// The references of one MicroService.
    refs_of: fn(&MicroService) -> Vec<K>,
    /// Per MicroService: the generation last indexed and what it refers to.
    indexed: HashMap<MsRef, (Option<i64>, Vec<K>)>,
    /// Per referred thing: the MicroServices that refer to it.
    referrers: HashMap<K, HashSet<MsRef>>,
}

impl<K: Clone + Eq + Hash> ReverseIndex<K> {
    /// An empty index of the references `refs_of` finds in a MicroService.
    pub fn new(refs_of: fn(&MicroService) -> Vec<K>) -> Self {
        Self {
            refs_of,
            indexed: HashMap::new(),
            referrers: HashMap::new(),
        }
    }

    /// Forgets what `r` refers to.
    pub fn remove(&mut self, r: &MsRef) {
        for key in self.indexed.remove(r).map(|(_, k)| k).unwrap_or_default() {
            if let Some(set) = self.referrers.get_mut(&key) {
                set.remove(r);
                if set.is_empty() {
                    self.referrers.remove(&key);
                }
            }
        }
    }

    /// Indexes `ms` (again when its spec changed; a status change keeps its generation).
    pub fn insert(&mut self, ms: &MicroService) {
        let r = ObjectRef::from_obj(ms);
        let generation = ms.metadata.generation;
        if self.indexed.get(&r).is_some_and(|(g, _)| *g == generation) {
            return;
        }
        self.remove(&r);
        let keys = (self.refs_of)(ms);
        for key in &keys {
            self.referrers
                .entry(key.clone())
                .or_default()
                .insert(r.clone());
        }
        self.indexed.insert(r, (generation, keys));
    }

    /// Indexes the whole cache anew.
    pub fn rebuild(&mut self, store: &Store<MicroService>) {
        self.indexed.clear();
        self.referrers.clear();
        for ms in store.state() {
            self.insert(&ms);
        }
    }

    /// Follows one change of the cache.
    pub fn apply(&mut self, change: &Change, store: &Store<MicroService>) {
        match change {
            Change::Applied(r) => match store.get(r) {
                Some(ms) => self.insert(&ms),
                None => self.remove(r),
            },
            Change::Deleted(r) => self.remove(r),
            Change::Resynced => self.rebuild(store),
        }
    }

    /// The MicroServices that refer to `key`.
    pub fn referrers(&self, key: &K) -> Vec<MsRef> {
        self.referrers
            .get(key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many things are referred to.
    pub fn len(&self) -> usize {
        self.referrers.len()
    }

    /// Whether nothing is referred to.
    pub fn is_empty(&self) -> bool {
        self.referrers.is_empty()
    }
}
