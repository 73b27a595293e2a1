//! The reconciler's rollout step: the only part of guarded rollouts that talks to the API server.
//!
//! [`prepare`] runs between build and apply: it reads the evidence (canary pods, the failover
//! engine's verdicts in `status.failover`), asks the state machine, and pins the stable
//! Deployment to its live template while a template is not yet trusted. [`finish`] runs after the
//! children are applied: it applies, scales down or deletes `<name>-canary` and records the
//! Event. [`annotate_status`] puts `status.rollout` and the `RolloutFailed` reason into the
//! status the reconciler writes.

use std::time::Duration;

use flotilla_crds::{
    conditions as ct, labels, ActiveTarget, MicroService, MicroServiceStatus, RolloutPhase,
    RolloutStrategy,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{
    build_canary, canary_name, canary_replicas, decide, degraded, template_revision, CanaryAction,
    CanaryEvidence, RolloutInputs, RolloutPlan, StableTemplate,
};
use crate::apply::{apply_child, delete_child, fetch_uncached, record};
use crate::build::DesiredResources;
use crate::context::Context;
use crate::error::ReconcileError as Error;
use crate::validate::ValidatedSpec;

/// The decision for this reconcile and what `finish` needs to carry it out.
#[derive(Debug, Clone)]
pub struct RolloutStep {
    /// The state machine's plan.
    pub plan: RolloutPlan,
    /// The Deployment the current spec builds (new template), for the canary.
    desired: Deployment,
    /// The revision of its template.
    revision: String,
}

impl RolloutStep {
    /// When the reconciler should look again: the plan's timer, if any.
    pub fn requeue_after(&self) -> Option<Duration> {
        self.plan.requeue_after
    }
}

/// Decides the rollout step and adjusts `desired` to it: while the new template is under analysis
/// or has failed, the stable Deployment keeps the template it runs.
pub async fn prepare(
    ctx: &Context,
    ms: &MicroService,
    v: &ValidatedSpec,
    desired: &mut DesiredResources,
) -> Result<RolloutStep, Error> {
    let revision = template_revision(&desired.deployment);
    let previous = ms.status.as_ref().and_then(|s| s.rollout.as_ref());
    let guarded = v.spec.rollout.strategy == RolloutStrategy::Guarded;
    let analysing = previous.is_some_and(|r| r.phase == RolloutPhase::Analyzing);
    let evidence = if guarded && analysing {
        gather(ctx, ms, v).await?
    } else {
        CanaryEvidence::default()
    };
    let ns = v.namespace.as_str();
    let live = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&v.name).within(ns));
    let stable_replicas = v.spec.replicas.max(
        live.as_deref()
            .and_then(|d| d.spec.as_ref()?.replicas)
            .unwrap_or(0),
    );
    let failed_over = ms
        .status
        .as_ref()
        .and_then(|s| s.failover.as_ref())
        .and_then(|f| f.active)
        == Some(ActiveTarget::Fallback);
    let plan = decide(&RolloutInputs {
        spec: &v.spec.rollout,
        desired_revision: &revision,
        canary_replicas: canary_replicas(&v.spec.rollout, stable_replicas),
        status: previous,
        retry_token: ms
            .annotations()
            .get(flotilla_crds::annotations::ROLLOUT_RETRY)
            .map(String::as_str),
        canary: &evidence,
        failed_over,
        now: Timestamp::now(),
    });
    let new_template = desired.deployment.clone();
    if plan.stable == StableTemplate::Keep {
        // The live Deployment runs the last good template; a missing one (deleted by hand) is
        // recreated with the new template rather than left absent.
        let kept = live
            .as_deref()
            .and_then(|d| d.spec.as_ref())
            .map(|s| s.template.clone());
        if let (Some(template), Some(spec)) = (kept, desired.deployment.spec.as_mut()) {
            spec.template = template;
        }
    }
    Ok(RolloutStep {
        plan,
        desired: new_template,
        revision,
    })
}

/// The canary pods (and stable pods' verdicts) of the MicroService.
async fn gather(
    ctx: &Context,
    ms: &MicroService,
    v: &ValidatedSpec,
) -> Result<CanaryEvidence, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &v.namespace);
    let lp = ListParams::default().labels(&format!("{}={}", labels::INSTANCE, v.name));
    let pods = api
        .list(&lp)
        .await
        .map_err(|e| Error::kube(format!("list pods of {}", v.name), e))?;
    let verdicts = ms
        .status
        .as_ref()
        .and_then(|s| s.failover.as_ref())
        .map(|f| f.pods.as_slice())
        .unwrap_or_default();
    Ok(CanaryEvidence::from_pods(&pods.items, verdicts))
}

/// Carries out the canary part of the plan and records its Event.
pub async fn finish(
    ctx: &Context,
    ms: &MicroService,
    v: &ValidatedSpec,
    step: &RolloutStep,
) -> Result<(), Error> {
    let ns = v.namespace.as_str();
    let name = canary_name(&v.name);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let live = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&name).within(ns));
    let owner_uid = v.owner.as_ref().map(|o| o.uid.as_str());
    crate::apply::ensure_leading(ctx)?;
    let outcome = match step.plan.canary {
        CanaryAction::Run { replicas } => {
            let canary = build_canary(&step.desired, &step.revision, replicas);
            apply_child(&ctx.leadership, &api, canary, live.as_deref(), owner_uid)
                .await?
                .1
        }
        CanaryAction::Halted => {
            // Kept for inspection with no pods, so it takes no traffic.
            let canary = build_canary(&step.desired, &step.revision, 0);
            apply_child(&ctx.leadership, &api, canary, live.as_deref(), owner_uid)
                .await?
                .1
        }
        CanaryAction::Absent => {
            // A canary created moments ago may not be in the cache yet (its watch event is
            // the echo of this operator's own write, which wakes no reconcile): while the
            // stored status says a canary ran, ask the API server rather than miss it.
            let canary_ran = ms
                .status
                .as_ref()
                .and_then(|s| s.rollout.as_ref())
                .is_some_and(|r| r.canary_revision.is_some());
            let fetched = if canary_ran {
                fetch_uncached(&ctx.leadership, &api, &name, live.as_deref()).await?
            } else {
                None
            };
            let live = live.as_deref().or(fetched.as_ref());
            delete_child(&ctx.leadership, &api, live, owner_uid).await?
        }
    };
    record(ctx, ms, "Deployment", &name, outcome).await;
    if let Some(e) = &step.plan.event {
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

/// Puts the rollout into the status the reconciler computed: `status.rollout` from the plan (or
/// the stored one when no plan was made, e.g. for an invalid spec), and `Degraded` with reason
/// `RolloutFailed` while the failed template is still asked for and nothing else is wrong.
pub fn annotate_status(
    computed: &mut MicroServiceStatus,
    step: Option<&RolloutStep>,
    previous: Option<&MicroServiceStatus>,
    now: &Time,
) {
    computed.rollout = match step {
        Some(s) => Some(s.plan.status.clone()),
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
