//! The I/O of the config stage: one GET per referenced Secret or ConfigMap, keeping only the
//! referenced keys' values, and the digest of the last template from the Deployment caches.
//! Reads only; nothing is written here.
//!
//! The objects are read with GETs rather than kept in a cache: a reflector of every Secret in
//! the cluster would hold all of them in the operator's memory, while only the referenced ones
//! matter. A reconcile of a MicroService with references costs one GET per referenced object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;

use super::digest::{announcement, compute, ConfigDigest, Observed, Outcome};
use super::{sources, Source, SourceKind};
use crate::context::Context;
use crate::error::{status_code, ReconcileError as Error};
use crate::rollout::canary_name;
use crate::validate::ValidatedSpec;

/// What the config stage found for one reconcile.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The digest of the last template: the canary's while one runs the newest template, else
    /// the stable Deployment's.
    pub previous: ConfigDigest,
    /// The next digest and the problem to report.
    pub outcome: Outcome,
}

impl Observation {
    /// The `ConfigChanged` Event note, when a referenced value changed since the last template
    /// and the new template is not one that already failed its analysis (its change was
    /// announced when it was first tried).
    pub fn announcement(&self, already_failed: bool) -> Option<String> {
        if already_failed {
            return None;
        }
        announcement(&self.previous.changed_in(&self.outcome.digest))
    }
}

/// Reads the sources of `ms` and computes the digest; `None` when the operator does not roll on
/// configuration changes. Only errors other than 403 and 404 fail the reconcile (as transient
/// errors, retried with backoff); a refused or missing object is held and reported instead.
pub async fn observe(ctx: &Context, v: &ValidatedSpec) -> Result<Option<Observation>, Error> {
    if !ctx.config_rollouts {
        return Ok(None);
    }
    let ns = v.namespace.as_str();
    let sources = sources(&v.name, &v.spec);
    let mut observed = BTreeMap::new();
    for source in &sources {
        observed.insert(source.key(), read_one(ctx, ns, source).await?);
    }
    let previous = previous_digest(ctx, ns, &v.name);
    let outcome = compute(&sources, &observed, &previous);
    Ok(Some(Observation { previous, outcome }))
}

/// The digest of the newest template this MicroService runs, from the caches: the canary's when
/// there is one, else the stable Deployment's.
fn previous_digest(ctx: &Context, ns: &str, name: &str) -> ConfigDigest {
    let cached = |n: &str| ctx.stores.deployments.get(n, ns);
    cached(&canary_name(name))
        .or_else(|| cached(name))
        .map_or_else(ConfigDigest::default, |d| ConfigDigest::of_template(&d))
}

/// Reads one source: the values of its referenced keys, or that it is missing or refused.
async fn read_one(ctx: &Context, ns: &str, source: &Source) -> Result<Observed, Error> {
    let name = source.name.as_str();
    let got = match source.kind {
        SourceKind::Secret => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            api.get_opt(name).await.map(|found| {
                found.map(|s| {
                    let mut data = s.data.unwrap_or_default();
                    pick(source, |k| data.remove(k).map(|v| v.0))
                })
            })
        }
        SourceKind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
            api.get_opt(name).await.map(|found| {
                found.map(|c| {
                    // The kubelet reads env values from `data` only, never `binaryData`.
                    let mut data = c.data.unwrap_or_default();
                    pick(source, |k| data.remove(k).map(String::into_bytes))
                })
            })
        }
    };
    match got {
        Ok(Some(values)) => Ok(Observed::Found(values)),
        Ok(None) => Ok(Observed::Missing),
        Err(e) if status_code(&e) == Some(403) => Ok(Observed::Forbidden),
        Err(e) => Err(Error::kube(
            format!("get {} {name}", source.kind.as_str()),
            e,
        )),
    }
}

/// The referenced keys of `source` with the value `take` finds for each.
fn pick(
    source: &Source,
    mut take: impl FnMut(&str) -> Option<Vec<u8>>,
) -> BTreeMap<String, Option<Vec<u8>>> {
    source.keys.keys().map(|k| (k.clone(), take(k))).collect()
}
