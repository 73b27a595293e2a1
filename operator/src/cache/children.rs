//! The caches of the children Flotilla manages keep each object as its JSON text, and a read
//! parses a fresh copy.
//!
//! The reconciler reads a child a few times per reconcile (to compare with what it would apply,
//! for status, for the rollout), but most of the time the object only sits in the cache. As
//! k8s-openapi structs a Deployment takes about 8.5 KiB of small allocations (every optional
//! field of the pod spec is laid out whether set or not); as text it is a single allocation of
//! a third of that. A read costs one parse, tens of microseconds.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use kube::runtime::watcher;
use kube::ResourceExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

/// Namespace and name.
type Key = (String, String);

type Objects = HashMap<Key, Box<str>>;

fn key_of<K: ResourceExt>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// The read side of one child kind's cache; cheap to clone.
pub struct ChildStore<K> {
    objects: Arc<RwLock<Objects>>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for ChildStore<K> {
    fn clone(&self) -> Self {
        ChildStore {
            objects: self.objects.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: DeserializeOwned> ChildStore<K> {
    /// A copy of the cached object `name` in `ns`, if the cache has it.
    pub fn get(&self, name: &str, ns: &str) -> Option<K> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        let text = objects.get(&(ns.to_owned(), name.to_owned()))?;
        match serde_json::from_str(text) {
            Ok(o) => Some(o),
            Err(e) => {
                // Text this cache wrote itself; a failure would be a serde bug. Reading it as
                // absent makes the writer look the object up from the API server.
                warn!(error = %e, name, ns, "cached child unreadable; treated as not cached");
                None
            }
        }
    }

    /// How many objects the cache holds.
    pub fn len(&self) -> usize {
        self.objects.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The write side: applies a watch stream's events, as kube-runtime's reflector does (a relist
/// is collected aside and replaces the cache at once when complete).
pub struct ChildWriter<K> {
    store: ChildStore<K>,
    relist: Option<Objects>,
}

/// An empty cache and its writer.
pub fn child_store<K>() -> (ChildStore<K>, ChildWriter<K>) {
    let store = ChildStore {
        objects: Arc::default(),
        kind: PhantomData,
    };
    let writer = ChildWriter {
        store: store.clone(),
        relist: None,
    };
    (store, writer)
}

fn text_of<K: Serialize + ResourceExt>(o: &K) -> Option<Box<str>> {
    match serde_json::to_string(o) {
        Ok(s) => Some(s.into_boxed_str()),
        Err(e) => {
            let name = o.name_any();
            warn!(error = %e, name, "child not cacheable; it will be read from the API server");
            None
        }
    }
}

impl<K: Serialize + ResourceExt> ChildWriter<K> {
    /// Applies one watch event.
    pub fn apply(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.relist = Some(Objects::new()),
            watcher::Event::InitApply(o) => {
                let relist = self.relist.get_or_insert_with(Objects::new);
                if let Some(text) = text_of(o) {
                    relist.insert(key_of(o), text);
                }
            }
            watcher::Event::InitDone => {
                let mut relisted = self.relist.take().unwrap_or_default();
                relisted.shrink_to_fit();
                *self.objects_mut() = relisted;
            }
            watcher::Event::Apply(o) => {
                let key = key_of(o);
                match text_of(o) {
                    Some(text) => self.objects_mut().insert(key, text),
                    None => self.objects_mut().remove(&key),
                };
            }
            watcher::Event::Delete(o) => {
                self.objects_mut().remove(&key_of(o));
            }
        }
    }

    fn objects_mut(&self) -> std::sync::RwLockWriteGuard<'_, Objects> {
        self.store
            .objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use kube::api::ObjectMeta;
    use kube::runtime::watcher::Event;

    use super::*;

    fn deployment(name: &str, image: &str) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            image: Some(image.into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                ready_replicas: Some(2),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_read_gives_back_the_object_the_watch_delivered() {
        let (store, mut writer) = child_store::<Deployment>();
        let users = deployment("users", "users:1");
        writer.apply(&Event::Apply(users.clone()));
        assert_eq!(store.get("users", "shop"), Some(users));
        assert_eq!(store.get("users", "other"), None);
        assert_eq!(store.get("auth", "shop"), None);

        let newer = deployment("users", "users:2");
        writer.apply(&Event::Apply(newer.clone()));
        assert_eq!(store.get("users", "shop"), Some(newer.clone()));
        writer.apply(&Event::Delete(newer));
        assert_eq!(store.get("users", "shop"), None);
        assert!(store.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_cache_only_when_complete() {
        let (store, mut writer) = child_store::<Deployment>();
        writer.apply(&Event::Apply(deployment("gone", "gone:1")));
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(deployment("users", "users:1")));
        // Until the relist is done, readers see the cache as it was.
        assert!(store.get("gone", "shop").is_some());
        assert!(store.get("users", "shop").is_none());
        writer.apply(&Event::InitDone);
        assert!(store.get("gone", "shop").is_none());
        assert_eq!(
            store.get("users", "shop"),
            Some(deployment("users", "users:1"))
        );
        assert_eq!(store.len(), 1);
    }
}
