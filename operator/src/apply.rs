//! Third stage of the pipeline: server-side apply of the desired children, deletion of children
//! no longer desired, and nothing at all when nothing changed.
//!
//! "Nothing changed" is decided without a request: every child carries the hash of the object
//! Flotilla last applied (`flotilla.rs/applied-hash`), and the applier skips the write when the
//! cached live object has that hash and contains every field of the desired object with the same
//! value. A removed field changes the hash; someone else's edit to one of our fields breaks the
//! containment; both lead to an apply with force, which restores our fields.

use std::fmt::Debug;

use flotilla_crds::{annotations, FIELD_MANAGER};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{status_code, Error};

/// Field manager that keeps a Deployment's replica count while Flotilla hands it over to an HPA.
pub const HANDOVER_FIELD_MANAGER: &str = "flotilla-replicas-handover";

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

/// Applies `desired` with field manager `flotilla` and force, unless the cached `live` object
/// shows nothing would change. Returns the resulting object and what happened.
pub async fn apply_child<K>(
    api: &Api<K>,
    mut desired: K,
    live: Option<&K>,
) -> Result<(K, Outcome), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    stamp(&mut desired)?;
    let name = desired.name_any();
    if let Some(live) = live {
        if !needs_apply(&desired, live)? {
            return Ok((live.clone(), Outcome::Unchanged));
        }
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let out = api
        .patch(&name, &pp, &Patch::Apply(&desired))
        .await
        .map_err(|e| api_error("apply", kind_of::<K>(), &name, e))?;
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
    let controlled = live
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == owner_uid);
    if !controlled {
        return Ok(Outcome::Unchanged);
    }
    let name = live.name_any();
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => Ok(Outcome::Deleted),
        Err(e) if status_code(&e) == Some(404) => Ok(Outcome::Unchanged),
        Err(e) => Err(api_error("delete", kind_of::<K>(), &name, e)),
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
pub async fn hand_over_replicas(api: &Api<Deployment>, live: &Deployment) -> Result<bool, Error> {
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
    api.patch(&name, &pp, &Patch::Apply(&patch))
        .await
        .map_err(|e| api_error("hand over replicas of", "Deployment", &name, e))?;
    Ok(true)
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
