//! What wakes a MicroService when a Secret or ConfigMap it reads changes: a metadata-only watch
//! on each kind (PartialObjectMetadata: names and resourceVersions, never the data) and an index
//! from each object to the MicroServices whose `env` references it, kept from the MicroService
//! cache's changes. A change to an object no MicroService references wakes nothing.
//!
//! Nothing of the watched objects is kept: the watches only say which object changed; the
//! reconcile reads the referenced ones itself ([`super::read`]). The index holds one entry per
//! referenced object. Watch errors (a 403 while the operator's RBAC lacks `list`/`watch` on
//! Secrets, a dropped connection) are logged and retried with kube's default backoff (up to
//! about 30 s between attempts); when the watch lists again, every referenced object wakes its
//! readers, so a grant made later takes effect without a restart.

use std::future::ready;

use flotilla_crds::MicroService;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::{sources, SourceKind};
use crate::cache::{Change, MicroServices};
use crate::reverse_index::ReverseIndex;

type MsRef = ObjectRef<MicroService>;

/// A referenced object across namespaces: namespace, kind, name.
type ObjectKey = (String, SourceKind, String);

/// One thing the trigger reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A MicroService changed (its references may have).
    MicroService(Change),
    /// A Secret or ConfigMap was created, changed or deleted (or listed again).
    Object {
        /// Its namespace.
        namespace: String,
        /// Secret or ConfigMap.
        kind: SourceKind,
        /// Its name.
        name: String,
    },
}

/// The objects `ms`'s env reads, across namespaces.
fn referenced(ms: &MicroService) -> Vec<ObjectKey> {
    let ns = ms.namespace().unwrap_or_default();
    sources(&ms.name_any(), &ms.spec)
        .into_iter()
        .map(|s| (ns.clone(), s.kind, s.name))
        .collect()
}

/// Which MicroServices read which objects.
pub struct SourceIndex(ReverseIndex<ObjectKey>);

impl Default for SourceIndex {
    fn default() -> Self {
        Self(ReverseIndex::new(referenced))
    }
}

impl SourceIndex {
    fn rebuild(&mut self, store: &Store<MicroService>) {
        self.0.rebuild(store);
    }

    /// The MicroServices to reconcile after `input`: the readers of a changed object; none for
    /// a MicroService change, which only updates the index (the controller reconciles the
    /// MicroService itself).
    pub fn on_input(&mut self, input: Input, store: &Store<MicroService>) -> Vec<MsRef> {
        match input {
            Input::MicroService(change) => {
                self.0.apply(&change, store);
                Vec::new()
            }
            Input::Object {
                namespace,
                kind,
                name,
            } => self.0.referrers(&(namespace, kind, name)),
        }
    }

    /// How many objects are referenced.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no object is referenced.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The MicroServices to reconcile because a Secret or ConfigMap they read changed, for
/// `Controller::reconcile_on`. Watches `ns`, or every namespace when `None`.
pub fn changes(
    client: &Client,
    ns: Option<&str>,
    microservices: &MicroServices,
) -> impl Stream<Item = MsRef> + Send + 'static {
    // Subscribe before reading the cache, so no change falls between the two.
    let ms_changes = microservices.changes().map(Input::MicroService);
    let store = microservices.store();
    let mut index = SourceIndex::default();
    index.rebuild(&store);
    let inputs = futures::stream::select_all([
        ms_changes.boxed(),
        touched::<Secret>(client, ns, SourceKind::Secret).boxed(),
        touched::<ConfigMap>(client, ns, SourceKind::ConfigMap).boxed(),
    ]);
    inputs.flat_map(move |input| futures::stream::iter(index.on_input(input, &store)))
}

/// Every object of kind `K` that is created, changed, deleted or listed, from a metadata-only
/// watch.
fn touched<K>(
    client: &Client,
    ns: Option<&str>,
    kind: SourceKind,
) -> impl Stream<Item = Input> + Send + 'static
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    // `PartialObjectMeta` makes every request metadata-only: lists and watch events carry
    // names and resourceVersions, never a Secret's data.
    let api: Api<PartialObjectMeta<K>> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    watcher(api, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .filter_map(move |object| {
            ready(match object {
                Ok(o) => Some(Input::Object {
                    namespace: o.namespace().unwrap_or_default(),
                    kind,
                    name: o.name_any(),
                }),
                Err(e) => {
                    warn!(kind = kind.as_str(), error = %e,
                        "watch for referenced configuration failed; retrying");
                    None
                }
            })
        })
}

#[cfg(test)]
mod tests {
    use flotilla_crds::MicroServiceSpec;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    use super::*;
    use flotilla_crds::{env_from_config_map, env_from_secret};

    fn ms(
        name: &str,
        ns: &str,
        generation: i64,
        env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    ) -> MicroService {
        let mut spec = MicroServiceSpec::with_image("img:1");
        spec.env = Some(env);
        let mut ms = MicroService::new(name, spec);
        ms.metadata.namespace = Some(ns.into());
        ms.metadata.generation = Some(generation);
        ms
    }

    fn object(ns: &str, kind: SourceKind, name: &str) -> Input {
        Input::Object {
            namespace: ns.into(),
            kind,
            name: name.into(),
        }
    }

    fn names(refs: Vec<MsRef>) -> Vec<String> {
        let mut n: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        n.sort();
        n
    }

    /// A change to a referenced Secret or ConfigMap wakes exactly the MicroServices that read
    /// it; an unreferenced object, one of the same name in another namespace or of the other
    /// kind, and a service's own config ConfigMap wake nothing; a reference dropped from a spec
    /// no longer wakes its former reader, and a deleted MicroService is forgotten.
    #[test]
    fn objects_wake_their_readers_only() {
        let mut writer: Writer<MicroService> = Writer::default();
        let store = writer.as_reader();
        let mut index = SourceIndex::default();
        let auth = ms(
            "auth",
            "shop",
            1,
            vec![
                env_from_secret("KEY", "auth-secrets", "signing-key", None),
                env_from_config_map("MODE", "settings", "mode"),
                env_from_config_map("LEVEL", "auth-config", "LOG_LEVEL"),
            ],
        );
        let users = ms(
            "users",
            "shop",
            1,
            vec![env_from_secret(
                "TOKEN",
                "auth-secrets",
                "admin-token",
                None,
            )],
        );
        let other_ns = ms(
            "auth",
            "lab",
            1,
            vec![env_from_secret("KEY", "lab-secrets", "k", None)],
        );
        for m in [&auth, &users, &other_ns] {
            writer.apply_watcher_event(&Event::Apply(m.clone()));
        }
        assert!(index
            .on_input(Input::MicroService(Change::Resynced), &store)
            .is_empty());
        assert_eq!(index.len(), 3);
        let wake = |index: &mut SourceIndex, i: Input| names(index.on_input(i, &store));
        let shop_secret = object("shop", SourceKind::Secret, "auth-secrets");
        assert_eq!(wake(&mut index, shop_secret.clone()), ["auth", "users"]);
        assert_eq!(
            wake(
                &mut index,
                object("shop", SourceKind::ConfigMap, "settings")
            ),
            ["auth"]
        );
        for unrelated in [
            object("shop", SourceKind::Secret, "unrelated"),
            object("lab", SourceKind::Secret, "auth-secrets"),
            object("shop", SourceKind::ConfigMap, "auth-secrets"),
            object("shop", SourceKind::ConfigMap, "auth-config"),
        ] {
            assert!(
                wake(&mut index, unrelated.clone()).is_empty(),
                "{unrelated:?}"
            );
        }
        // `users` stops reading the Secret.
        let users2 = ms("users", "shop", 2, Vec::new());
        writer.apply_watcher_event(&Event::Apply(users2.clone()));
        let r = ObjectRef::from_obj(&users2);
        index.on_input(Input::MicroService(Change::Applied(r)), &store);
        assert_eq!(wake(&mut index, shop_secret.clone()), ["auth"]);
        // `auth` is deleted.
        writer.apply_watcher_event(&Event::Delete(auth.clone()));
        let r = ObjectRef::from_obj(&auth);
        index.on_input(Input::MicroService(Change::Deleted(r)), &store);
        assert!(wake(&mut index, shop_secret).is_empty());
        assert_eq!(index.len(), 1);
    }

    /// A status-only change (same generation) leaves the index as it is; a new generation
    /// indexes the spec again.
    #[test]
    fn only_spec_changes_reindex() {
        let mut writer: Writer<MicroService> = Writer::default();
        let store = writer.as_reader();
        let mut index = SourceIndex::default();
        let first = ms(
            "auth",
            "shop",
            1,
            vec![env_from_secret("K", "a", "k", None)],
        );
        writer.apply_watcher_event(&Event::Apply(first.clone()));
        let r = ObjectRef::from_obj(&first);
        index.on_input(Input::MicroService(Change::Applied(r.clone())), &store);
        // A store that still shows generation 1 but a different spec is not looked at again.
        let same_generation = ms(
            "auth",
            "shop",
            1,
            vec![env_from_secret("K", "b", "k", None)],
        );
        writer.apply_watcher_event(&Event::Apply(same_generation));
        index.on_input(Input::MicroService(Change::Applied(r.clone())), &store);
        let wake = |index: &mut SourceIndex, name: &str| {
            names(index.on_input(object("shop", SourceKind::Secret, name), &store))
        };
        assert_eq!(wake(&mut index, "a"), ["auth"]);
        writer.apply_watcher_event(&Event::Apply(ms(
            "auth",
            "shop",
            2,
            vec![env_from_secret("K", "b", "k", None)],
        )));
        index.on_input(Input::MicroService(Change::Applied(r)), &store);
        assert!(wake(&mut index, "a").is_empty());
        assert_eq!(wake(&mut index, "b"), ["auth"]);
    }
}
