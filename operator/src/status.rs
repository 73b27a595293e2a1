//! Last stage of the pipeline: the MicroService status, computed purely from the Deployment and
//! what validation found, and written only when the reconciler's part of it changed.
//!
//! The reconciler owns every status field except `failover`, `traffic` and the failover engine's
//! conditions; it applies its part with field manager `flotilla` and never sends the rest.
//! [`condition`] is the one condition builder, used by the failover status plan too. A Warning
//! Event goes out when `Degraded` turns true or changes reason.

use flotilla_crds::{
    condition, conditions as ct, reasons, MicroService, MicroServiceStatus, RolloutStatus,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use crate::build::selector_string;
use crate::context::Context;
use crate::error::ReconcileError;
use crate::rollout::{degraded, RolloutPlan};
use crate::validate::ValidatedSpec;
use crate::write::{within_lease, Leadership};

/// Condition types the reconciler owns.
pub const OWN_CONDITIONS: [&str; 3] = [ct::READY, ct::PROGRESSING, ct::DEGRADED];

/// Everything the status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct StatusInputs<'a> {
    /// `metadata.generation` of the MicroService.
    pub generation: Option<i64>,
    /// MicroService name (for the selector).
    pub name: &'a str,
    /// Replica count Flotilla asks for (`None` while an HPA decides).
    pub spec_replicas: Option<i32>,
    /// The Deployment as last seen.
    pub deployment: Option<&'a Deployment>,
    /// Dependencies that do not exist.
    pub missing_dependencies: &'a [String],
    /// A referenced Secret or ConfigMap that is missing or unreadable (see
    /// [`crate::config_refs`]).
    pub sources: Option<Problem<'a>>,
    /// Why the spec cannot be realised, if it cannot.
    pub problem: Option<Problem<'a>>,
    /// The current status, for condition transition times.
    pub previous: Option<&'a MicroServiceStatus>,
    /// The time to stamp on conditions that change.
    pub now: &'a Time,
}

/// A permanent problem to report as `Degraded`.
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    /// Condition reason (CamelCase, from [`flotilla_crds::reasons`]).
    pub reason: &'static str,
    /// What is wrong, for a person.
    pub message: &'a str,
}

struct Rollout {
    desired: i32,
    total: i32,
    updated: i32,
    ready: i32,
    complete: bool,
    deadline_exceeded: bool,
}

fn rollout(d: &Deployment, spec_replicas: Option<i32>) -> Rollout {
    let st = d.status.clone().unwrap_or_default();
    let desired = spec_replicas
        .or_else(|| d.spec.as_ref().and_then(|s| s.replicas))
        .unwrap_or(1);
    let total = st.replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let synced = match (d.metadata.generation, st.observed_generation) {
        (Some(g), Some(o)) => o >= g,
        (None, _) => true,
        (Some(_), None) => false,
    };
    let spec_matches = d
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .is_none_or(|r| spec_replicas.is_none_or(|w| w == r));
    let deadline_exceeded = st.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some(reasons::PROGRESS_DEADLINE_EXCEEDED)
    });
    Rollout {
        desired,
        total,
        updated,
        ready,
        complete: synced
            && spec_matches
            && updated >= desired
            && total == updated
            && available >= desired,
        deadline_exceeded,
    }
}

/// The reconciler's part of the status.
pub fn compute(i: StatusInputs<'_>) -> MicroServiceStatus {
    let r = i.deployment.map(|d| rollout(d, i.spec_replicas));
    let (ready_ok, ready_reason, ready_msg, prog, prog_reason, prog_msg) = match &r {
        None => (
            false,
            reasons::WAITING_FOR_DEPLOYMENT,
            "the Deployment has not been created yet".to_string(),
            true,
            reasons::WAITING_FOR_DEPLOYMENT,
            "waiting for the Deployment".to_string(),
        ),
        Some(r) if r.complete && r.desired == 0 => (
            true,
            reasons::SCALED_TO_ZERO,
            "scaled to zero replicas".to_string(),
            false,
            reasons::ROLLOUT_COMPLETE,
            "no rollout in progress".to_string(),
        ),
        Some(r) if r.complete && r.ready >= r.desired => (
            true,
            reasons::AVAILABLE,
            format!("{}/{} replicas ready", r.ready, r.desired),
            false,
            reasons::ROLLOUT_COMPLETE,
            "no rollout in progress".to_string(),
        ),
        Some(r) => {
            let msg = format!(
                "{} of {} replicas updated, {} ready",
                r.updated, r.desired, r.ready
            );
            let reason = if r.deadline_exceeded {
                reasons::PROGRESS_DEADLINE_EXCEEDED
            } else {
                reasons::ROLLING_OUT
            };
            (
                false,
                reason,
                msg.clone(),
                !r.deadline_exceeded,
                reason,
                msg,
            )
        }
    };
    // A MicroService the admission policy refuses is not ready whatever an earlier Deployment
    // does: its current spec will not run until it changes.
    let (ready_ok, ready_reason, ready_msg) = match i.problem {
        Some(p) if p.reason == reasons::POLICY_REFUSED => {
            (false, reasons::POLICY_REFUSED, p.message.to_string())
        }
        _ => (ready_ok, ready_reason, ready_msg),
    };
    let (degraded, deg_reason, deg_msg) = if let Some(p) = i.problem {
        (true, p.reason, p.message.to_string())
    } else if r.as_ref().is_some_and(|r| r.deadline_exceeded) {
        (
            true,
            reasons::PROGRESS_DEADLINE_EXCEEDED,
            "the Deployment exceeded its progress deadline".to_string(),
        )
    } else if let Some(p) = i.sources {
        (true, p.reason, p.message.to_string())
    } else if !i.missing_dependencies.is_empty() {
        (
            true,
            reasons::DEPENDENCY_MISSING,
            format!(
                "MicroService(s) not found in the namespace: {}",
                i.missing_dependencies.join(", ")
            ),
        )
    } else {
        (false, reasons::AS_EXPECTED, String::new())
    };
    let g = i.generation;
    let p = i.previous.map_or(&[][..], |s| s.conditions.as_slice());
    MicroServiceStatus {
        observed_generation: g,
        conditions: vec![
            condition(p, ct::READY, ready_ok, ready_reason, ready_msg, g, i.now),
            condition(p, ct::PROGRESSING, prog, prog_reason, prog_msg, g, i.now),
            condition(p, ct::DEGRADED, degraded, deg_reason, deg_msg, g, i.now),
        ],
        replicas: Some(r.as_ref().map_or(0, |r| r.total)),
        ready_replicas: Some(r.as_ref().map_or(0, |r| r.ready)),
        updated_replicas: Some(r.as_ref().map_or(0, |r| r.updated)),
        ready: Some(match &r {
            Some(r) => format!("{}/{}", r.ready, r.desired),
            None => format!("0/{}", i.spec_replicas.unwrap_or(0)),
        }),
        selector: Some(selector_string(i.name)),
        failover: None,
        rollout: None,
        traffic: None,
    }
}

/// The part of a stored status the reconciler owns, to compare with a computed one.
pub fn own_part(s: &MicroServiceStatus) -> MicroServiceStatus {
    let mut own = s.clone();
    own.failover = None;
    own.traffic = None;
    own.conditions
        .retain(|c| OWN_CONDITIONS.contains(&c.type_.as_str()));
    own.conditions
        .sort_by_key(|c| OWN_CONDITIONS.iter().position(|t| *t == c.type_));
    own
}

/// Whether writing `computed` would change the stored status.
pub fn needs_write(computed: &MicroServiceStatus, stored: Option<&MicroServiceStatus>) -> bool {
    stored.map(own_part).as_ref() != Some(computed)
}

/// Applies the reconciler's part of the status (field manager `flotilla`), only while leading;
/// returns the MicroService as written.
pub async fn write(
    lead: &Leadership,
    api: &Api<MicroService>,
    ms: &MicroService,
    status: &MicroServiceStatus,
) -> Result<MicroService, ReconcileError> {
    let name = ms.name_any();
    let body = serde_json::json!({
        "apiVersion": flotilla_crds::API_VERSION,
        "kind": flotilla_crds::KIND,
        "status": status,
    });
    let pp = PatchParams::apply(flotilla_crds::FIELD_MANAGER).force();
    let action = || format!("apply status of MicroService {name}");
    let patch = Patch::Apply(&body);
    let call = api.patch_status(&name, &pp, &patch);
    within_lease(lead, action, call)
        .await?
        .map_err(|e| ReconcileError::kube(action(), e))
}

/// What one reconcile found, to report in the status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Findings<'a> {
    /// The validated spec, when validation passed.
    pub spec: Option<&'a ValidatedSpec>,
    /// The rollout planned, when one was.
    pub rollout: Option<&'a RolloutPlan>,
    /// The Deployment as the apply returned it (fresher than the cache).
    pub applied: Option<&'a Deployment>,
    /// Dependencies that do not exist.
    pub missing: &'a [String],
    /// A referenced Secret or ConfigMap that is missing or unreadable.
    pub sources: Option<Problem<'a>>,
    /// A permanent problem, if there is one.
    pub problem: Option<Problem<'a>>,
}

/// Computes the status from `found`, writes it when the reconciler's part changed, and emits a
/// Warning Event when `Degraded` turns true or changes reason.
pub async fn update(
    ctx: &Context,
    ms: &MicroService,
    found: Findings<'_>,
) -> Result<(), ReconcileError> {
    let name = ms.name_any();
    let ns = ms.namespace().unwrap_or_default();
    // The Deployment this reconcile applied; the cache's copy (parsed on read) only without it.
    let cached = match found.applied {
        Some(_) => None,
        None => ctx.stores.deployments.get(&name, &ns),
    };
    let deployment = found.applied.or(cached.as_ref());
    let t = Time(Timestamp::now());
    // A reconcile that starts before the cache shows the previous one's status write compares
    // with what was written, so it does not write the same status again.
    let unseen = ctx.stores.own_writes.unseen_status(ms);
    let previous = unseen.as_ref().or(ms.status.as_ref());
    let spec_replicas = match found.spec {
        Some(v) if v.spec.autoscaling.is_some() => None,
        Some(v) => Some(v.spec.replicas),
        None if ms.spec.autoscaling.is_some() => None,
        None => Some(ms.spec.replicas),
    };
    let mut computed = compute(StatusInputs {
        generation: ms.metadata.generation,
        name: &name,
        spec_replicas,
        deployment,
        missing_dependencies: found.missing,
        sources: found.sources,
        problem: found.problem,
        previous,
        now: &t,
    });
    let rollout = found.rollout.map(RolloutPlan::status);
    add_rollout(&mut computed, rollout, previous, &t);
    if !needs_write(&computed, previous) {
        return Ok(());
    }
    let api: Api<MicroService> = Api::namespaced(ctx.client.clone(), &ns);
    let flight = ctx
        .stores
        .own_writes
        .sending::<MicroService>(&ns, &name, ObjectRef::from_obj(ms));
    let written = write(&ctx.leadership, &api, ms, &computed).await?;
    flight.status(ms, &written, &computed);
    // A failed rollout has its own `RolledBack` Event with the same message.
    if let Some(c) =
        newly_degraded(&computed, previous).filter(|c| c.reason != reasons::ROLLOUT_FAILED)
    {
        let (reason, note) = (c.reason.clone(), c.message.clone());
        ctx.publish(ms, EventType::Warning, &reason, "Reconcile", note)
            .await;
    }
    Ok(())
}

/// Puts the rollout into the computed status: `status.rollout` as planned (or the stored one when
/// no plan was made, e.g. for an invalid spec), and `Degraded` with reason `RolloutFailed` while
/// the failed template is still asked for and nothing else is wrong.
pub fn add_rollout(
    computed: &mut MicroServiceStatus,
    planned: Option<&RolloutStatus>,
    previous: Option<&MicroServiceStatus>,
    now: &Time,
) {
    computed.rollout = match planned {
        Some(s) => Some(s.clone()),
        None => previous.and_then(|p| p.rollout.clone()),
    };
    let Some((reason, message)) = degraded(computed.rollout.as_ref()) else {
        return;
    };
    let generation = computed.observed_generation;
    let Some(c) = computed
        .conditions
        .iter_mut()
        .find(|c| c.type_ == ct::DEGRADED && c.status == ct::FALSE)
    else {
        return;
    };
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == ct::DEGRADED))
        .filter(|c| c.status == ct::TRUE)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    *c = Condition {
        type_: ct::DEGRADED.into(),
        status: ct::TRUE.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    };
}

/// The `Degraded` condition of `computed` if it is true and was not true with the same reason.
fn newly_degraded<'a>(
    computed: &'a MicroServiceStatus,
    before: Option<&MicroServiceStatus>,
) -> Option<&'a Condition> {
    let c = computed
        .conditions
        .iter()
        .find(|c| c.type_ == ct::DEGRADED && c.status == ct::TRUE)?;
    let was = before
        .and_then(|s| s.conditions.iter().find(|p| p.type_ == ct::DEGRADED))
        .map(|p| (p.status.as_str(), p.reason.as_str()));
    (was != Some((c.status.as_str(), c.reason.as_str()))).then_some(c)
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
