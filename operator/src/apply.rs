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
//! MicroService, or the apply stops with [`ReconcileError::ChildConflict`]. Every write goes
//! through [`crate::write`] (a timeout, only while this replica leads, counted in
//! `flotilla_child_writes_total`); the changes of one reconcile are announced in one Event per
//! outcome (created, updated, deleted), naming the children.

use std::fmt::Debug;

use flotilla_crds::{annotations, MicroService, FIELD_MANAGER};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::build::{config_map_name, DesiredResources};
use crate::cache::OwnWrites;
use crate::context::Context;
use crate::error::{status_code, ReconcileError as Error};
use crate::rollout::{canary_name, CanaryChange, RolloutPlan};
use crate::validate::ValidatedSpec;
use crate::write::{
    call_api, count_child_write, ensure_leading, map_api_error, within_lease, Leadership, Outcome,
};

/// Field manager that keeps a Deployment's replica count while Flotilla hands it over to an HPA.
pub const HANDOVER_FIELD_MANAGER: &str = "flotilla-replicas-handover";

/// Puts the hash of `obj` (without the hash annotation) into its annotations.
pub fn stamp_applied_hash<K: Resource + Serialize>(obj: &mut K) -> Result<(), Error> {
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

/// Whether `obj` carries a controller reference to the owner with uid `owner_uid`.
pub fn is_controlled_by<K: Resource>(obj: &K, owner_uid: Option<&str>) -> bool {
    obj.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == owner_uid)
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
        None => call_api(lead, "get", kind_of::<K>(), name, api.get_opt(name)).await,
    }
}

/// Applies `desired` with field manager `flotilla` and force, unless the cached `live` object
/// shows nothing would change. Returns the resulting object and what happened.
///
/// The object must be Flotilla's: a cached `live` object, or one found by name when the cache
/// has none, that lacks the controller reference to `owner_uid` is a
/// [`Error::ChildConflict`], and nothing is written.
///
/// With `own`, the write is announced to the reconciler's own writes just before it is sent and
/// recorded with its answer, so its watch event (its echo) wakes no reconcile of the owner.
pub async fn apply_child<K>(
    lead: &Leadership,
    api: &Api<K>,
    mut desired: K,
    live: Option<&K>,
    owner_uid: Option<&str>,
    own: Option<(&OwnWrites, ObjectRef<MicroService>)>,
) -> Result<(K, Outcome), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    stamp_applied_hash(&mut desired)?;
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
    let flight = own.map(|(own, owner)| {
        let ns = desired.namespace().unwrap_or_default();
        own.sending::<K>(&ns, &name, owner)
    });
    let out = call_api(lead, "apply", kind, &name, api.patch(&name, &pp, &body)).await?;
    let outcome = match live {
        None => Outcome::Created,
        Some(l) if l.resource_version() == out.resource_version() => Outcome::Unchanged,
        Some(_) => Outcome::Updated,
    };
    if let (Some(flight), true) = (flight, outcome != Outcome::Unchanged) {
        flight.child(&out);
    }
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
    match within_lease(lead, || format!("delete {kind} {name}"), delete).await? {
        Ok(_) => Ok(Outcome::Deleted),
        Err(e) if status_code(&e) == Some(404) => Ok(Outcome::Unchanged),
        Err(e) => Err(map_api_error("delete", kind, &name, e)),
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
    call_api(lead, "hand over replicas of", "Deployment", &name, call).await?;
    Ok(true)
}

/// Counts one child write and announces a change with a Normal Event of its own.
async fn announce_child_write(
    ctx: &Context,
    ms: &MicroService,
    kind: &'static str,
    name: &str,
    outcome: Outcome,
) {
    count_child_write(&ctx.metrics, kind, outcome);
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

/// What one reconcile wrote to the children, announced afterwards in one Event per outcome
/// (Events are for significant actions; creating a MicroService's children is one action).
#[derive(Debug, Default)]
pub struct Changes(Vec<(&'static str, String, Outcome)>);

impl Changes {
    /// Counts the write of one child and keeps it for the summary.
    fn count(&mut self, ctx: &Context, kind: &'static str, name: &str, outcome: Outcome) {
        count_child_write(&ctx.metrics, kind, outcome);
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
/// reference it); the stable Deployment runs the template `rollout` says. Returns the Deployment
/// as applied. What was written is announced in one Event per outcome, also when a later child
/// fails.
pub async fn apply_all(
    ctx: &Context,
    ms: &MicroService,
    v: &ValidatedSpec,
    desired: DesiredResources,
    rollout: &RolloutPlan,
) -> Result<Deployment, Error> {
    let mut changes = Changes::default();
    let result = apply_children(ctx, v, desired, rollout, &mut changes).await;
    changes.announce(ctx, ms).await;
    if result.is_err() && !changes.0.is_empty() {
        // A reconcile that wrote a child before failing got further than the last one: the
        // retry backoff starts over. The watch events of those writes are its own echoes and
        // wake no reconcile, so without this children that fail one after another would wait
        // for the sum of every delay.
        ctx.reset_backoff(&ObjectRef::from_obj(ms));
    }
    result
}

/// Applies `desired` (see [`apply_child`]) and remembers the write, so its watch event does not
/// reconcile the owner again.
async fn apply_own<K>(
    ctx: &Context,
    owner_name: &str,
    api: &Api<K>,
    desired: K,
    live: Option<&K>,
    owner_uid: Option<&str>,
) -> Result<(K, Outcome), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let ns = desired.namespace().unwrap_or_default();
    let owner = ObjectRef::new(owner_name).within(&ns);
    let own = Some((&ctx.stores.own_writes, owner));
    apply_child(&ctx.leadership, api, desired, live, owner_uid, own).await
}

async fn apply_children(
    ctx: &Context,
    v: &ValidatedSpec,
    desired: DesiredResources,
    rollout: &RolloutPlan,
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
    let live_cm = stores.config_maps.get(&cm_name, ns);
    ensure_leading(lead)?;
    let outcome = match config_map {
        Some(cm) => {
            apply_own(ctx, &v.name, &cm_api, cm, live_cm.as_ref(), owner)
                .await?
                .1
        }
        None => delete_child(lead, &cm_api, live_cm.as_ref(), owner).await?,
    };
    changes.count(ctx, "ConfigMap", &cm_name, outcome);

    let deployment = rollout.stable_deployment(deployment);
    let dep_api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let live_dep = stores.deployments.get(&v.name, ns);
    let autoscaled = deployment
        .spec
        .as_ref()
        .is_some_and(|s| s.replicas.is_none());
    if let (true, Some(live)) = (autoscaled, live_dep.as_ref()) {
        ensure_leading(lead)?;
        if is_controlled_by(live, owner) && hand_over_replicas(lead, &dep_api, live).await? {
            info!("replica count handed over to the autoscaler");
        }
    }
    ensure_leading(lead)?;
    let (applied_dep, outcome) =
        apply_own(ctx, &v.name, &dep_api, deployment, live_dep.as_ref(), owner).await?;
    changes.count(ctx, "Deployment", &v.name, outcome);

    let svc_api: Api<Service> = Api::namespaced(client.clone(), ns);
    let live_svc = stores.services.get(&v.name, ns);
    ensure_leading(lead)?;
    let (_, outcome) = apply_own(ctx, &v.name, &svc_api, service, live_svc.as_ref(), owner).await?;
    changes.count(ctx, "Service", &v.name, outcome);

    let hpa_api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let live_hpa = stores.hpas.get(&v.name, ns);
    ensure_leading(lead)?;
    let outcome = match hpa {
        Some(h) => {
            apply_own(ctx, &v.name, &hpa_api, h, live_hpa.as_ref(), owner)
                .await?
                .1
        }
        None => delete_child(lead, &hpa_api, live_hpa.as_ref(), owner).await?,
    };
    changes.count(ctx, "HorizontalPodAutoscaler", &v.name, outcome);
    Ok(applied_dep)
}

/// Carries out the canary part of `rollout` (apply `<name>-canary` or delete it), announces the
/// write on its own, and publishes the rollout's Event when the decision has one.
pub async fn apply_canary(
    ctx: &Context,
    ms: &MicroService,
    v: &ValidatedSpec,
    rollout: &RolloutPlan,
) -> Result<(), Error> {
    let ns = v.namespace.as_str();
    let name = canary_name(&v.name);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let live = ctx.stores.deployments.get(&name, ns);
    let owner = v.owner.as_ref().map(|o| o.uid.as_str());
    let lead = &ctx.leadership;
    ensure_leading(lead)?;
    let outcome = match &rollout.canary {
        CanaryChange::Apply(canary) => {
            apply_child(lead, &api, (**canary).clone(), live.as_ref(), owner, None)
                .await?
                .1
        }
        CanaryChange::Delete { look_up } => {
            let fetched = if *look_up {
                fetch_uncached(lead, &api, &name, live.as_ref()).await?
            } else {
                None
            };
            let live = live.as_ref().or(fetched.as_ref());
            delete_child(lead, &api, live, owner).await?
        }
    };
    announce_child_write(ctx, ms, "Deployment", &name, outcome).await;
    if let Some(e) = &rollout.decision.event {
        let type_ = if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.publish(ms, type_, e.reason, "Rollout", e.note.clone())
            .await;
    }
    Ok(())
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
