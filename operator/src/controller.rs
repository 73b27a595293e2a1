//! Wires the kube-runtime Controller: the replica's shared MicroService cache (see
//! [`crate::cache`]) drives it and also wakes the dependents of a service that appears or
//! disappears; label-filtered watches on the children Flotilla manages feed the caches the
//! reconciler compares against; with `--rollout-on-config-change`, metadata-only watches on
//! Secrets and ConfigMaps wake the MicroServices that read a changed one (see
//! [`crate::config_refs::trigger`]). Runs only while this replica leads.

use std::sync::Arc;

use flotilla_crds::{labels, MicroService};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info};

use crate::build::OperatorInputs;
use crate::cache::{child_store, Change, ChildStore, MicroServices, OwnWrites, Stores, Synced};
use crate::config_refs;
use crate::context::Context;
use crate::events::EventSink;
use crate::health::Health;
use crate::http::Readiness;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::reconcile::{error_policy, reconcile};
use crate::reverse_index::ReverseIndex;
use crate::verdict_keys::VerdictKeys;
use crate::write::Leadership;
use crate::OperatorConfig;

/// Name the operator reports Events under.
pub const CONTROLLER_NAME: &str = "flotilla-operator";

fn api_for<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A new [`Synced`] flag, pushed to `flags`, and the stream inspector that sets it on InitDone.
fn on_init_done<K>(flags: &mut Vec<Synced>) -> impl FnMut(&watcher::Event<K>) {
    let (set, flag) = Synced::new();
    flags.push(flag);
    move |event| {
        if matches!(event, watcher::Event::InitDone) {
            set.set();
        }
    }
}

type MsRef = ObjectRef<MicroService>;

/// The services `ms` lists as dependencies, in its namespace.
fn dependencies(ms: &MicroService) -> Vec<MsRef> {
    let ns = ms.metadata.namespace.as_deref().unwrap_or_default();
    let deps = ms.spec.dependencies.iter().flatten();
    deps.map(|d| ObjectRef::new(d).within(ns)).collect()
}

/// Which MicroServices list which others as dependencies.
type DependencyIndex = ReverseIndex<MsRef>;

/// The MicroServices to reconcile after `change`. Any change of a service wakes its dependents,
/// its status included: a guarded rollout and the failover of a MicroService follow the status
/// of the fallback it depends on. After a resync the controller's own stream reconciles
/// everything.
fn dependents_to_wake(
    index: &mut DependencyIndex,
    change: &Change,
    store: &Store<MicroService>,
) -> Vec<MsRef> {
    index.apply(change, store);
    match change {
        Change::Applied(r) | Change::Deleted(r) => index.referrers(r),
        Change::Resynced => Vec::new(),
    }
}

/// What the controller runs with besides the client and configuration.
pub struct Shared {
    /// The replica's MicroService cache.
    pub microservices: MicroServices,
    /// Whether writes are allowed.
    pub leadership: Leadership,
    /// The keys that sign traffic verdicts; their public half goes into every pod template.
    pub verdict_keys: Arc<VerdictKeys>,
    /// Metrics.
    pub metrics: Metrics,
    /// Set once the caches have synced.
    pub readiness: Readiness,
    /// Liveness: every reconcile is tracked, so one that never finishes shows in `/healthz`.
    pub health: Health,
    /// Where the reconciler's Events (a rollout promoted or rolled back) are also notified.
    pub notifier: Notifier,
}

/// Trims managed fields to what [`crate::apply::applies_replicas`] reads: the entries that own
/// `spec.replicas`, each with its manager, operation and that one field. A Deployment's full
/// field sets take several times the memory of the Deployment itself.
fn keep_replicas_ownership(entries: &mut Vec<ManagedFieldsEntry>) {
    entries.retain_mut(|m| {
        let owns_replicas = m
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:spec"))
            .and_then(|s| s.get("f:replicas"))
            .is_some();
        if owns_replicas {
            m.fields_v1 = Some(FieldsV1(serde_json::json!({"f:spec": {"f:replicas": {}}})));
            m.time = None;
        }
        owns_replicas
    });
    entries.shrink_to_fit();
}

/// A label-filtered watch on one child kind, reflected into a store whose `Synced` flag is
/// pushed to `synced`. Managed fields are dropped, or with `keep_managed_fields` trimmed to who
/// owns `spec.replicas` (the replica handover reads the Deployments').
fn child_cache<K>(
    client: &Client,
    ns: Option<&str>,
    synced: &mut Vec<Synced>,
    keep_managed_fields: bool,
    own: &OwnWrites,
) -> (
    ChildStore<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K: Resource<DynamicType = ()>,
{
    // Only children Flotilla created are cached: the label keeps the caches to what the
    // reconciler reads, however many other Deployments and ConfigMaps the cluster holds.
    let children = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ));
    let (store, mut writer) = child_store::<K>();
    let stream = watcher(api_for(client, ns), children)
        .default_backoff()
        .modify(move |o: &mut K| {
            if keep_managed_fields {
                keep_replicas_ownership(o.managed_fields_mut());
            } else {
                o.managed_fields_mut().clear();
            }
        })
        .inspect_ok(move |event| writer.apply(event))
        .inspect_ok(on_init_done(synced))
        .inspect_ok({
            let own = own.clone();
            move |event| {
                if let watcher::Event::Delete(o) = event {
                    own.forget(&ObjectRef::from_obj(o));
                }
            }
        })
        .touched_objects()
        // The echo of the reconciler's own apply is no reason to reconcile the owner again.
        .try_filter({
            let own = own.clone();
            move |o| std::future::ready(!own.is_echo(o))
        });
    (store, stream)
}

/// The MicroServices to reconcile because a service they depend on appeared, disappeared or
/// changed.
fn dependency_changes(
    microservices: &MicroServices,
) -> impl futures::Stream<Item = MsRef> + Send + 'static {
    let store = microservices.store();
    let mut index = DependencyIndex::new(dependencies);
    index.rebuild(&store);
    microservices
        .changes()
        .flat_map(move |c| futures::stream::iter(dependents_to_wake(&mut index, &c, &store)))
}

/// Sets `readiness` once every cache has synced.
fn report_ready(stores: &Stores, readiness: Readiness) {
    let stores = stores.clone();
    tokio::spawn(async move {
        if stores.ready().await {
            info!("caches synced");
            readiness.set(true);
        }
    });
}

/// Runs the controller until `shutdown` completes and in-flight reconciles have finished.
pub async fn run(
    client: Client,
    config: &OperatorConfig,
    identity: String,
    shared: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Shared {
        microservices,
        leadership,
        verdict_keys,
        metrics,
        readiness,
        health,
        notifier,
    } = shared;
    let ns = config.watch_namespace.as_deref();
    // Each cache's stream sets its `Synced` flag on InitDone, after the reflector applied it.
    let mut synced = Vec::new();
    // A watch event held while our write to its object was in flight, and found not to be that
    // write's echo, wakes the owner through `wakes`.
    let (own, wakes) = OwnWrites::with_wakes();
    let (dep_store, deployments) = child_cache::<Deployment>(&client, ns, &mut synced, true, &own);
    let (svc_store, services) = child_cache::<Service>(&client, ns, &mut synced, false, &own);
    let (cm_store, config_maps) = child_cache::<ConfigMap>(&client, ns, &mut synced, false, &own);
    let (hpa_store, hpas) =
        child_cache::<HorizontalPodAutoscaler>(&client, ns, &mut synced, false, &own);
    synced.push(microservices.synced());
    let ms_store = microservices.store();
    let objects = microservices.objects(own.clone());
    let controller = Controller::for_shared_stream(objects, ms_store.clone());
    // A changed Secret or ConfigMap wakes the MicroServices that read it; off, neither is watched.
    let controller = if config.rollout_on_config_change {
        controller.reconcile_on(config_refs::trigger::changes(&client, ns, &microservices))
    } else {
        controller
    };
    let stores = Stores {
        microservices: ms_store,
        deployments: dep_store,
        services: svc_store,
        config_maps: cm_store,
        hpas: hpa_store,
        synced,
        own_writes: own,
    };
    report_ready(&stores, readiness);
    let recorder = EventSink::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(identity),
        },
    )
    .with_notifier(notifier)
    .counting(metrics.events.clone());
    let build_inputs = OperatorInputs {
        verdict_keys: Some(verdict_keys.published().to_owned()),
    };
    let ctx = Arc::new(
        Context::new(client, recorder, metrics, stores, leadership, build_inputs)
            .with_policy(config.policy.clone())
            .with_config_rollouts(config.rollout_on_config_change),
    );
    controller
        .owns_stream(deployments)
        .owns_stream(services)
        .owns_stream(config_maps)
        .owns_stream(hpas)
        .reconcile_on(dependency_changes(&microservices))
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(wakes))
        .with_config(ControllerConfig::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(
            move |ms, ctx| {
                let started = health.reconcile_started();
                async move {
                    let _running = started;
                    reconcile(ms, ctx).await
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "controller event");
            }
        })
        .await;
    info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use flotilla_crds::MicroServiceSpec;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::apply::applies_replicas;
    use serde_json::{json, Value};

    fn entry(manager: &str, op: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(op.into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    /// Trimming a cached Deployment's managed fields keeps every answer of `applies_replicas`
    /// and drops the field sets that do not own `spec.replicas`.
    #[test]
    fn trimmed_managed_fields_answer_replica_ownership_alike() {
        let mut d = Deployment::default();
        d.metadata.managed_fields = Some(vec![
            entry(
                "flotilla",
                "Apply",
                json!({"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}}),
            ),
            entry(
                "flotilla-replicas-handover",
                "Apply",
                json!({"f:spec": {"f:replicas": {}}}),
            ),
            entry("kube-controller-manager", "Update", json!({"f:status": {}})),
            entry("other", "Apply", json!({"f:spec": {"f:template": {}}})),
        ]);
        let managers = [
            "flotilla",
            "flotilla-replicas-handover",
            "kube-controller-manager",
            "other",
        ];
        let before: Vec<bool> = managers.iter().map(|m| applies_replicas(&d, m)).collect();
        keep_replicas_ownership(d.managed_fields_mut());
        let after: Vec<bool> = managers.iter().map(|m| applies_replicas(&d, m)).collect();
        assert_eq!(before, after);
        assert_eq!(before, [true, true, false, false]);
        assert_eq!(d.managed_fields().len(), 2);
    }

    fn ms(name: &str, generation: i64, deps: &[&str]) -> MicroService {
        let mut spec = MicroServiceSpec::with_image("img:1");
        spec.dependencies =
            (!deps.is_empty()).then(|| deps.iter().map(|d| d.to_string()).collect());
        let mut ms = MicroService::new(name, spec);
        ms.metadata.namespace = Some("shop".into());
        ms.metadata.generation = Some(generation);
        ms
    }

    fn names(refs: Vec<MsRef>) -> Vec<String> {
        let mut n: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        n.sort();
        n
    }

    /// A service that appears, changes or disappears wakes the MicroServices that depend on
    /// it, and only those; a dependency dropped from a spec no longer wakes its former dependent.
    #[test]
    fn dependents_are_woken_through_the_index() {
        let mut writer: Writer<MicroService> = Writer::default();
        let store = writer.as_reader();
        let mut index = DependencyIndex::new(dependencies);
        for m in [ms("web", 1, &["users"]), ms("admin", 1, &["users", "auth"])] {
            writer.apply_watcher_event(&Event::Apply(m));
        }
        assert!(dependents_to_wake(&mut index, &Change::Resynced, &store).is_empty());
        let users = ms("users", 1, &[]);
        writer.apply_watcher_event(&Event::Apply(users.clone()));
        let r = ObjectRef::from_obj(&users);
        let woken = dependents_to_wake(&mut index, &Change::Applied(r.clone()), &store);
        assert_eq!(names(woken), ["admin", "web"]);
        assert_eq!(
            names(dependents_to_wake(
                &mut index,
                &Change::Applied(r.clone()),
                &store
            )),
            ["admin", "web"],
            "a status change of the dependency wakes its dependents too"
        );
        writer.apply_watcher_event(&Event::Apply(ms("users", 2, &[])));
        assert_eq!(
            names(dependents_to_wake(
                &mut index,
                &Change::Applied(r.clone()),
                &store
            )),
            ["admin", "web"]
        );
        // `web` stops depending on `users`.
        let web = ms("web", 2, &[]);
        writer.apply_watcher_event(&Event::Apply(web.clone()));
        dependents_to_wake(
            &mut index,
            &Change::Applied(ObjectRef::from_obj(&web)),
            &store,
        );
        writer.apply_watcher_event(&Event::Delete(ms("users", 2, &[])));
        assert_eq!(
            names(dependents_to_wake(&mut index, &Change::Deleted(r), &store)),
            ["admin"]
        );
    }
}
