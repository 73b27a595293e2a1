//! Third stage of the pipeline: server-side apply of the desired children, deletion of children
//! no longer desired, and nothing at all when nothing changed.
//!
//! "Nothing changed" is decided without a request: every child carries the hash of the object
//! Flotilla last applied (`flotilla.rs/applied-hash`), and the applier skips the write when the
//! cached live object has that hash and contains every field of the desired object with the same
//! value. A removed field changes the hash; someone else's edit to one of our fields breaks the
//! containment; both lead to an apply with force, which restores our fields.
//!
//! Flotilla never takes over an object it did not create: before the first apply of a child
//! whose name is already taken, the object must carry Flotilla's controller reference for this
//! MicroService, or the apply stops with [`ReconcileError::ChildConflict`]. Every write has a
//! timeout ([`WRITE_TIMEOUT`]), is made only while this replica leads, and is counted in
//! `flotilla_child_writes_total`; the changes of one reconcile are announced in one Event per
//! outcome (created, updated, deleted), naming the children.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use flotilla_crds::{annotations, MicroService, FIELD_MANAGER};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::build::{config_map_name, DesiredResources};
use crate::context::Context;
use crate::error::{status_code, ReconcileError as Error};
use crate::leader::{Leadership, WriteLapsed};
use crate::validate::ValidatedSpec;

/// Field manager that keeps a Deployment's replica count while Flotilla hands it over to an HPA.
pub const HANDOVER_FIELD_MANAGER: &str = "flotilla-replicas-handover";

/// Longest one API write (or the lookup before a create) may take. Each call is also cut at the
/// renew deadline ([`Leadership::write`]), so a hanging API server cannot hold a write past the
/// point where this replica stops leading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(8);

/// What an apply or delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The object did not exist and was created.
    Created,
    /// The object existed and was changed.
    Updated,
    /// Nothing was written (or the server found nothing to change).
    Unchanged,
    /// The object was deleted.
    Deleted,
}

impl Outcome {
    /// Fixed label for metrics and Event reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
        }
    }
}

/// Puts the hash of `obj` (without the hash annotation) into its annotations.
pub fn stamp<K: Resource + Serialize>(obj: &mut K) -> Result<(), Error> {
    obj.annotations_mut().remove(annotations::APPLIED_HASH);
    let bytes = serde_json::to_vec(obj)?;
    let hash = hex::encode(&Sha256::digest(&bytes)[..8]);
    obj.annotations_mut()
        .insert(annotations::APPLIED_HASH.to_string(), hash);
    Ok(())
}

/// Whether `part` is contained in `whole`: every object key of `part` exists in `whole` with a
/// contained value, arrays have the same length and contained elements, scalars are equal.
pub fn is_contained(part: &Value, whole: &Value) -> bool {
    match (part, whole) {
        (Value::Object(p), Value::Object(w)) => p
            .iter()
            .all(|(k, v)| w.get(k).is_some_and(|wv| is_contained(v, wv))),
        (Value::Array(p), Value::Array(w)) => {
            p.len() == w.len() && p.iter().zip(w).all(|(a, b)| is_contained(a, b))
        }
        (p, w) => p == w,
    }
}

/// Whether applying the stamped `desired` could change `live`.
pub fn needs_apply<K: Serialize>(desired: &K, live: &K) -> Result<bool, Error> {
    let d = serde_json::to_value(desired)?;
    let l = serde_json::to_value(live)?;
    Ok(!is_contained(&d, &l))
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds are static strings in k8s-openapi; fall back to a fixed label otherwise.
    match K::kind(&()).as_ref() {
        "Deployment" => "Deployment",
        "Service" => "Service",
        "ConfigMap" => "ConfigMap",
        "HorizontalPodAutoscaler" => "HorizontalPodAutoscaler",
        _ => "object",
    }
}

/// Runs one API call while leading, within [`WRITE_TIMEOUT`] and the renew deadline.
pub async fn gated<T>(
    lead: &Leadership,
    action: impl FnOnce() -> String,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, Error> {
    match lead.write(WRITE_TIMEOUT, call).await {
        Ok(r) => Ok(r),
        Err(WriteLapsed::NotLeading) => Err(Error::NotLeading),
        Err(WriteLapsed::Timeout(after)) => Err(Error::Timeout {
            action: action(),
            after,
        }),
    }
}

/// [`gated`], mapping the call's error like [`api_error`].
async fn timed<T>(
    lead: &Leadership,
    action: &str,
    kind: &'static str,
    name: &str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    gated(lead, || format!("{action} {kind} {name}"), call)
        .await?
        .map_err(|e| api_error(action, kind, name, e))
}

/// Whether `obj` carries a controller reference to the owner with uid `owner_uid`.
pub fn is_controlled_by<K: Resource>(obj: &K, owner_uid: Option<&str>) -> bool {
    obj.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == owner_uid)
}

/// The 400/422 answers are the server refusing the object itself: permanent. Everything else is
/// classified by [`Error::category`].
fn api_error(action: &str, kind: &'static str, name: &str, e: kube::Error) -> Error {
    match (&e, status_code(&e)) {
        (kube::Error::Api(s), Some(400 | 422)) => Error::Rejected {
            kind,
            name: name.to_string(),
            message: s.message.clone(),
        },
        _ => Error::kube(format!("{action} {kind} {name}"), e),
    }
}

/// The child `name` from the API server when the cache has no `live` copy of it (`None` when
/// it has one, or when the server has none either): the cache holds only labelled objects, and
/// may lag behind a create.
pub async fn fetch_uncached<K>(
    lead: &Leadership,
    api: &Api<K>,
    name: &str,
    live: Option<&K>,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    match live {
        Some(_) => Ok(None),
        None => timed(lead, "get", kind_of::<K>(), name, api.get_opt(name)).await,
    }
}

/// Applies `desired` with field manager `flotilla` and force, unless the cached `live` object
/// shows nothing would change. Returns the resulting object and what happened.
///
/// The object must be Flotilla's: a cached `live` object, or one found by name when the cache
/// has none, that lacks the controller reference to `owner_uid` is a
/// [`Error::ChildConflict`], and nothing is written.
pub async fn apply_child<K>(
    lead: &Leadership,
    api: &Api<K>,
    mut desired: K,
    live: Option<&K>,
    owner_uid: Option<&str>,
) -> Result<(K, Outcome), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    stamp(&mut desired)?;
    let name = desired.name_any();
    let kind = kind_of::<K>();
    let fetched = fetch_uncached(lead, api, &name, live).await?;
    let live = live.or(fetched.as_ref());
    if let Some(live) = live {
        if !is_controlled_by(live, owner_uid) {
            return Err(Error::ChildConflict { kind, name });
        }
        if !needs_apply(&desired, live)? {
            return Ok((live.clone(), Outcome::Unchanged));
        }
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let body = Patch::Apply(&desired);
    let out = timed(lead, "apply", kind, &name, api.patch(&name, &pp, &body)).await?;
    let outcome = match live {
        None => Outcome::Created,
        Some(l) if l.resource_version() == out.resource_version() => Outcome::Unchanged,
        Some(_) => Outcome::Updated,
    };
    Ok((out, outcome))
}

/// Deletes the cached child `live` when it is controlled by the owner with uid `owner_uid`.
/// A child that is already gone counts as deleted.
pub async fn delete_child<K>(
    lead: &Leadership,
    api: &Api<K>,
    live: Option<&K>,
    owner_uid: Option<&str>,
) -> Result<Outcome, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(live) = live else {
        return Ok(Outcome::Unchanged);
    };
    if !is_controlled_by(live, owner_uid) {
        return Ok(Outcome::Unchanged);
    }
    let name = live.name_any();
    let kind = kind_of::<K>();
    let dp = DeleteParams::background();
    let delete = api.delete(&name, &dp);
    match gated(lead, || format!("delete {kind} {name}"), delete).await? {
        Ok(_) => Ok(Outcome::Deleted),
        Err(e) if status_code(&e) == Some(404) => Ok(Outcome::Unchanged),
        Err(e) => Err(api_error("delete", kind, &name, e)),
    }
}

/// Whether field manager `manager` owns `spec.replicas` of the Deployment through an apply.
pub fn applies_replicas(d: &Deployment, manager: &str) -> bool {
    d.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
    })
}

/// Before Flotilla stops applying `spec.replicas` (autoscaling was turned on), a second field
/// manager takes co-ownership of the current value, so dropping the field from Flotilla's apply
/// does not reset the Deployment to one replica; the HPA then takes it over by updating it.
pub async fn hand_over_replicas(
    lead: &Leadership,
    api: &Api<Deployment>,
    live: &Deployment,
) -> Result<bool, Error> {
    if !applies_replicas(live, FIELD_MANAGER) {
        return Ok(false);
    }
    let Some(replicas) = live.spec.as_ref().and_then(|s| s.replicas) else {
        return Ok(false);
    };
    let name = live.name_any();
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    let pp = PatchParams::apply(HANDOVER_FIELD_MANAGER).force();
    let body = Patch::Apply(&patch);
    let call = api.patch(&name, &pp, &body);
    timed(lead, "hand over replicas of", "Deployment", &name, call).await?;
    Ok(true)
}

/// Counts a child write and announces a change with a Normal Event.
pub async fn record(
    ctx: &Context,
    ms: &MicroService,
    kind: &'static str,
    name: &str,
    outcome: Outcome,
) {
    ctx.metrics
        .child_writes
        .with_label_values(&[kind, outcome.as_str()])
        .inc();
    let (reason, action) = match outcome {
        Outcome::Unchanged => return,
        Outcome::Created => ("Created", "Apply"),
        Outcome::Updated => ("Updated", "Apply"),
        Outcome::Deleted => ("Deleted", "Delete"),
    };
    info!(
        kind,
        child = name,
        outcome = outcome.as_str(),
        "child written"
    );
    let note = format!("{kind} {name} {}", outcome.as_str());
    ctx.publish(ms, EventType::Normal, reason, action, note)
        .await;
}

fn cached<K>(store: &Store<K>, name: &str, ns: &str) -> Option<std::sync::Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store.get(&ObjectRef::new(name).within(ns))
}

/// Stops a write when this replica no longer leads (the lease could not be renewed in time).
pub fn ensure_leading(ctx: &Context) -> Result<(), Error> {
    if ctx.leadership.is_leading() {
        Ok(())
    } else {
        Err(Error::NotLeading)
    }
}

/// What one reconcile wrote to the children, announced afterwards in one Event per outcome
/// (Events are for significant actions; creating a MicroService's children is one action).
#[derive(Debug, Default)]
pub struct Changes(Vec<(&'static str, String, Outcome)>);

impl Changes {
    /// Counts the write of one child and keeps it for the summary.
    fn record(&mut self, ctx: &Context, kind: &'static str, name: &str, outcome: Outcome) {
        ctx.metrics
            .child_writes
            .with_label_values(&[kind, outcome.as_str()])
            .inc();
        if outcome != Outcome::Unchanged {
            info!(
                kind,
                child = name,
                outcome = outcome.as_str(),
                "child written"
            );
            self.0.push((kind, name.to_string(), outcome));
        }
    }

    /// The Events to publish: per outcome, its reason, action and a note naming the children.
    pub fn summary(&self) -> Vec<(&'static str, &'static str, String)> {
        [
            (Outcome::Created, "Created", "Apply"),
            (Outcome::Updated, "Updated", "Apply"),
            (Outcome::Deleted, "Deleted", "Delete"),
        ]
        .into_iter()
        .filter_map(|(outcome, reason, action)| {
            let children: Vec<String> = self
                .0
                .iter()
                .filter(|(_, _, o)| *o == outcome)
                .map(|(kind, name, _)| format!("{kind} {name}"))
                .collect();
            (!children.is_empty()).then(|| {
                let note = format!("{} {}", outcome.as_str(), children.join(", "));
                (reason, action, note)
            })
        })
        .collect()
    }

    /// Publishes [`Changes::summary`] as Normal Events about `ms`.
    async fn announce(&self, ctx: &Context, ms: &MicroService) {
        for (reason, action, note) in self.summary() {
            ctx.publish(ms, EventType::Normal, reason, action, note)
                .await;
        }
    }
}

/// Applies every desired child and deletes the unwanted ones, ConfigMap first (the pods
/// reference it); returns the Deployment as applied. What was written is announced in one
/// Event per outcome, also when a later child fails.
pub async fn apply_all(
    ctx: &Context,
    ms: &MicroService,
    v: &ValidatedSpec,
    desired: DesiredResources,
) -> Result<Deployment, Error> {
    let mut changes = Changes::default();
    let result = apply_children(ctx, v, desired, &mut changes).await;
    changes.announce(ctx, ms).await;
    result
}

/// Applies `desired` (see [`apply_child`]) and remembers the write, so its watch event does not
/// reconcile the owner again.
async fn apply_own<K>(
    ctx: &Context,
    api: &Api<K>,
    desired: K,
    live: Option<&K>,
    owner_uid: Option<&str>,
) -> Result<(K, Outcome), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let (out, outcome) = apply_child(&ctx.leadership, api, desired, live, owner_uid).await?;
    if outcome != Outcome::Unchanged {
        ctx.stores.own_writes.child(&out);
    }
    Ok((out, outcome))
}

async fn apply_children(
    ctx: &Context,
    v: &ValidatedSpec,
    desired: DesiredResources,
    changes: &mut Changes,
) -> Result<Deployment, Error> {
    let DesiredResources {
        deployment,
        service,
        config_map,
        hpa,
    } = desired;
    let client = &ctx.client;
    let stores = &ctx.stores;
    let ns = v.namespace.as_str();
    let owner = v.owner.as_ref().map(|o| o.uid.as_str());
    let lead = &ctx.leadership;

    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm_name = config_map_name(&v.name);
    let live_cm = cached(&stores.config_maps, &cm_name, ns);
    ensure_leading(ctx)?;
    let outcome = match config_map {
        Some(cm) => {
            apply_own(ctx, &cm_api, cm, live_cm.as_deref(), owner)
                .await?
                .1
        }
        None => delete_child(lead, &cm_api, live_cm.as_deref(), owner).await?,
    };
    changes.record(ctx, "ConfigMap", &cm_name, outcome);

    let dep_api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let live_dep = cached(&stores.deployments, &v.name, ns);
    let autoscaled = deployment
        .spec
        .as_ref()
        .is_some_and(|s| s.replicas.is_none());
    if let (true, Some(live)) = (autoscaled, live_dep.as_deref()) {
        ensure_leading(ctx)?;
        if is_controlled_by(live, owner) && hand_over_replicas(lead, &dep_api, live).await? {
            info!("replica count handed over to the autoscaler");
        }
    }
    ensure_leading(ctx)?;
    let (applied_dep, outcome) =
        apply_own(ctx, &dep_api, deployment, live_dep.as_deref(), owner).await?;
    changes.record(ctx, "Deployment", &v.name, outcome);

    let svc_api: Api<Service> = Api::namespaced(client.clone(), ns);
    let live_svc = cached(&stores.services, &v.name, ns);
    ensure_leading(ctx)?;
    let (_, outcome) = apply_own(ctx, &svc_api, service, live_svc.as_deref(), owner).await?;
    changes.record(ctx, "Service", &v.name, outcome);

    let hpa_api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let live_hpa = cached(&stores.hpas, &v.name, ns);
    ensure_leading(ctx)?;
    let outcome = match hpa {
        Some(h) => {
            apply_own(ctx, &hpa_api, h, live_hpa.as_deref(), owner)
                .await?
                .1
        }
        None => delete_child(lead, &hpa_api, live_hpa.as_deref(), owner).await?,
    };
    changes.record(ctx, "HorizontalPodAutoscaler", &v.name, outcome);
    Ok(applied_dep)
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
