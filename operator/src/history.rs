//! Fifth stage of the pipeline, after apply: the revision history. Every pod template that
//! becomes stable (the first one, a rolling update, a promotion, an undo) or is rolled back is
//! recorded as a ControllerRevision `<name>-<revision>` owned by the MicroService, as Kubernetes
//! keeps a Deployment's or StatefulSet's history, so `kubectl flotilla history` and `undo` work
//! after an operator restart and `kubectl get controllerrevisions` shows them. The history is
//! kept to `spec.rollout.revisionHistoryLimit` entries, never dropping the stable one.
//!
//! Nothing is written when the rollout's decision changes no revision, so a converged service
//! costs no request here. [`entry`] and [`to_prune`] are pure; the writes go through
//! [`crate::write`].

use flotilla_crds::{history, MicroService, RolloutStatus, FAILOVER_FIELD_MANAGER};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::Value;

use crate::apply::is_controlled_by;
use crate::build::common_labels;
use crate::context::Context;
use crate::error::ReconcileError as Error;
use crate::rollout::machine::{reason, RolloutDecision};
use crate::rollout::RolloutPlan;
use crate::validate::ValidatedSpec;
use crate::write::{call_api, count_child_write, ensure_leading, Outcome};

const KIND: &str = "ControllerRevision";

/// The name of the history entry of `revision`.
pub fn entry_name(name: &str, revision: &str) -> String {
    format!("{name}-{revision}")
}

/// What the rollout's decision adds to the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The template's revision (hash).
    pub revision: String,
    /// One of the `history::OUTCOME_*` values.
    pub outcome: &'static str,
    /// Why a rolled-back template failed.
    pub reason: Option<String>,
}

/// The entry the step from `prev` to `decision` records: a template that became stable, or one
/// newly rolled back; `None` when no revision changed.
pub fn entry(prev: Option<&RolloutStatus>, decision: &RolloutDecision) -> Option<Entry> {
    let next = &decision.status;
    let prev_stable = prev.and_then(|p| p.stable_revision.as_deref());
    if let Some(stable) = next
        .stable_revision
        .as_deref()
        .filter(|s| Some(*s) != prev_stable)
    {
        let outcome = match decision.event.as_ref().map(|e| e.reason) {
            Some(reason::PROMOTED) => history::OUTCOME_PROMOTED,
            Some(reason::UNDONE) => history::OUTCOME_UNDONE,
            _ => history::OUTCOME_STABLE,
        };
        return Some(Entry {
            revision: stable.to_string(),
            outcome,
            reason: None,
        });
    }
    let newly_failed = decision
        .event
        .as_ref()
        .is_some_and(|e| e.reason == reason::ROLLED_BACK || e.reason == reason::HALTED);
    let failed = next.failed_revision.as_deref().filter(|_| newly_failed)?;
    Some(Entry {
        revision: failed.to_string(),
        outcome: history::OUTCOME_ROLLED_BACK,
        reason: next.reason.clone(),
    })
}

/// Names of the entries to delete so that at most `limit` stay: the lowest revision numbers
/// first, never `keep` (the stable template's entry).
pub fn to_prune(entries: &[ControllerRevision], limit: usize, keep: &str) -> Vec<String> {
    let mut sorted: Vec<&ControllerRevision> = entries.iter().collect();
    sorted.sort_by_key(|e| e.revision);
    let excess = sorted.len().saturating_sub(limit);
    sorted
        .into_iter()
        .filter(|e| e.name_any() != keep)
        .take(excess)
        .map(ResourceExt::name_any)
        .collect()
}

/// The spec's template fields, as recorded: the spec without what is not part of a revision.
pub fn recorded_spec(ms: &MicroService) -> Result<Value, Error> {
    Ok(serde_json::json!({ "spec": history::tracked_spec(&ms.spec)? }))
}

/// The field manager that last changed the spec, from the MicroService's managed fields; the
/// operator's own managers do not count.
pub fn changed_by(ms: &MicroService) -> Option<String> {
    ms.managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:spec").is_some())
        })
        .filter(|m| {
            let manager = m.manager.as_deref();
            manager != Some(flotilla_crds::FIELD_MANAGER) && manager != Some(FAILOVER_FIELD_MANAGER)
        })
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.clone())
}

/// Whether the history records `revision` of the MicroService `name` as good.
pub async fn recorded_good(
    ctx: &Context,
    ns: &str,
    name: &str,
    revision: &str,
) -> Result<bool, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ns);
    let entry_name = entry_name(name, revision);
    let found = api
        .get_opt(&entry_name)
        .await
        .map_err(|e| Error::kube(format!("get {KIND} {entry_name}"), e))?;
    Ok(found.is_some_and(|e| {
        e.annotations()
            .get(history::OUTCOME)
            .is_some_and(|o| history::is_good(o))
    }))
}

/// Records what the rollout's decision adds to the history and prunes it.
pub async fn record(
    ctx: &Context,
    ms: &MicroService,
    v: &ValidatedSpec,
    plan: &RolloutPlan,
) -> Result<(), Error> {
    let Some(entry) = entry(plan.previous.as_ref(), &plan.decision) else {
        return Ok(());
    };
    let lead = &ctx.leadership;
    ensure_leading(lead)?;
    let ns = v.namespace.as_str();
    let owner = v.owner.as_ref().map(|o| o.uid.as_str());
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ns);
    let selector = history::selector(&v.name);
    let listed = call_api(
        lead,
        "list",
        KIND,
        &v.name,
        api.list(&ListParams::default().labels(&selector)),
    )
    .await?;
    let mut entries: Vec<ControllerRevision> = listed
        .items
        .into_iter()
        .filter(|e| is_controlled_by(e, owner))
        .collect();
    let number = entries.iter().map(|e| e.revision).max().unwrap_or(0) + 1;
    // The cache holds MicroServices without their managed fields: read them once, here, where
    // a revision changes.
    let msvcs: Api<MicroService> = Api::namespaced(ctx.client.clone(), ns);
    let fresh = call_api(lead, "get", "MicroService", &v.name, msvcs.get(&v.name)).await?;
    let mut notes = std::collections::BTreeMap::from([
        (history::OUTCOME.to_string(), entry.outcome.to_string()),
        (
            history::RECORDED_AT.to_string(),
            Timestamp::now().to_string(),
        ),
    ]);
    if let Some(by) = changed_by(&fresh) {
        notes.insert(history::CHANGED_BY.to_string(), by);
    }
    if let Some(r) = &entry.reason {
        notes.insert(history::REASON.to_string(), r.clone());
    }
    let name = entry_name(&v.name, &entry.revision);
    let existing = entries.iter().position(|e| e.name_any() == name);
    let outcome = match existing {
        // Tried or run before: the same template, so the same data (immutable anyway); it moves
        // to the top of the history with its new outcome.
        Some(i) => {
            let patch = serde_json::json!({
                "metadata": {"annotations": notes},
                "revision": number,
            });
            let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
            let call = api.patch(&name, &params, &patch);
            entries[i] = call_api(lead, "update", KIND, &name, call).await?;
            Outcome::Updated
        }
        None => {
            let created = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.to_string()),
                    labels: Some(common_labels(v)),
                    annotations: Some(notes),
                    owner_references: v.owner.clone().map(|o| vec![o]),
                    ..ObjectMeta::default()
                },
                data: Some(RawExtension(recorded_spec(ms)?)),
                revision: number,
            };
            let params = PostParams::default();
            let call = api.create(&params, &created);
            entries.push(call_api(lead, "create", KIND, &name, call).await?);
            Outcome::Created
        }
    };
    count_child_write(&ctx.metrics, KIND, outcome);
    let limit = usize::try_from(v.spec.rollout.revision_history_limit).unwrap_or(1);
    let keep = plan
        .decision
        .status
        .stable_revision
        .as_deref()
        .map(|s| entry_name(&v.name, s))
        .unwrap_or_default();
    for old in to_prune(&entries, limit, &keep) {
        let params = DeleteParams::background();
        let call = api.delete(&old, &params);
        call_api(lead, "delete", KIND, &old, call).await?;
        count_child_write(&ctx.metrics, KIND, Outcome::Deleted);
    }
    Ok(())
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
