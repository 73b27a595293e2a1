//! The rollout stage of the reconciler, between build and apply: one [`RolloutPlan`] from the
//! spec and what is observed.
//!
//! [`plan`] reads the evidence (canary pods, the failover engine's verdicts in
//! `status.failover` and its request figures in `status.traffic`), asks the state machine, and says in one value which template the stable
//! Deployment runs (the one just built, or the live one while a new template is not yet
//! trusted), what becomes of `<name>-canary` (applied as built here, or deleted), the Event to
//! announce and the `status.rollout` to report. It reads, it never writes: the apply stage carries
//! the plan out and the status stage reports it. The built resources are not changed.

use std::time::Duration;

use flotilla_crds::{
    annotations, labels, ActiveTarget, MicroService, MicroServiceStatus, RolloutPhase,
    RolloutStatus, RolloutStrategy,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::canary::{build_canary, canary_replicas, template_revision};
use super::evidence::CanaryEvidence;
use super::machine::{next_step, CanaryAction, RolloutDecision, RolloutInputs, StableTemplate};
use crate::build::DesiredResources;
use crate::context::Context;
use crate::error::ReconcileError as Error;
use crate::validate::ValidatedSpec;

/// What this reconcile does about the rollout: the state machine's decision, carried out on the
/// built resources.
#[derive(Debug, Clone)]
pub struct RolloutPlan {
    /// The `status.rollout` the decision was made from (read from the API server during an
    /// analysis, else the cache's); the revision history compares the decision with it.
    pub previous: Option<RolloutStatus>,
    /// The state machine's decision (next `status.rollout`, Event, timer).
    pub decision: RolloutDecision,
    /// The template the stable Deployment keeps while the new one is under analysis or has
    /// failed; `None` when it takes the template just built.
    pub kept_template: Option<PodTemplateSpec>,
    /// What becomes of `<name>-canary`.
    pub canary: CanaryChange,
}

/// What the apply stage does with the canary Deployment.
#[derive(Debug, Clone)]
pub enum CanaryChange {
    /// Apply this Deployment: the canary running the new template, or halted with no pods and
    /// kept for inspection.
    Apply(Box<Deployment>),
    /// Delete it if it exists. `look_up`: a canary ran, so one created moments ago may be
    /// missing from the cache (its watch event is the echo of this operator's own write, which
    /// wakes no reconcile); ask the API server rather than miss it.
    Delete {
        /// Ask the API server when the cache shows no canary.
        look_up: bool,
    },
}

impl RolloutPlan {
    /// When the reconciler should look again: the decision's timer, if any.
    pub fn requeue_after(&self) -> Option<Duration> {
        self.decision.requeue_after
    }

    /// The `status.rollout` to report.
    pub fn status(&self) -> &RolloutStatus {
        &self.decision.status
    }

    /// The stable Deployment to apply: `built`, running the kept template if there is one.
    pub fn stable_deployment(&self, built: Deployment) -> Deployment {
        let Some(template) = &self.kept_template else {
            return built;
        };
        let mut stable = built;
        if let Some(spec) = stable.spec.as_mut() {
            spec.template = template.clone();
        }
        stable
    }
}

/// Decides the rollout for `desired`, the resources just built from `v`.
pub async fn plan(
    ctx: &Context,
    ms: &MicroService,
    v: &ValidatedSpec,
    desired: &DesiredResources,
) -> Result<RolloutPlan, Error> {
    let revision = template_revision(&desired.deployment);
    let guarded = v.spec.rollout.strategy == RolloutStrategy::Guarded;
    let status = current_status(ctx, ms, v, guarded).await?;
    let previous = status.as_ref().and_then(|s| s.rollout.as_ref());
    let analysing = previous.is_some_and(|r| r.phase == RolloutPhase::Analyzing);
    let evidence = if guarded && analysing {
        gather(ctx, status.as_ref(), v).await?
    } else {
        CanaryEvidence::default()
    };
    let ns = v.namespace.as_str();
    let live = ctx.stores.deployments.get(&v.name, ns);
    let stable_replicas = v.spec.replicas.max(
        live.as_ref()
            .and_then(|d| d.spec.as_ref()?.replicas)
            .unwrap_or(0),
    );
    let failed_over = status
        .as_ref()
        .and_then(|s| s.failover.as_ref())
        .and_then(|f| f.active)
        == Some(ActiveTarget::Fallback);
    // An undo names the revision it goes back to; the history says whether that one was good.
    let undo = ms.annotations().get(annotations::ROLLOUT_UNDO);
    let stable = previous.and_then(|r| r.stable_revision.as_deref());
    let undo_to_good = match undo {
        Some(to) if *to == revision && stable != Some(revision.as_str()) => {
            // Not readable: the template is analysed like any new one.
            crate::history::recorded_good(ctx, ns, &v.name, &revision)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "revision history not readable; analysing the undo");
                    false
                })
        }
        _ => false,
    };
    let decision = next_step(&RolloutInputs {
        spec: &v.spec.rollout,
        desired_revision: &revision,
        canary_replicas: canary_replicas(&v.spec.rollout, stable_replicas),
        status: previous,
        retry_token: ms
            .annotations()
            .get(annotations::ROLLOUT_RETRY)
            .map(String::as_str),
        promote_token: ms
            .annotations()
            .get(annotations::ROLLOUT_PROMOTE)
            .map(String::as_str),
        abort_token: ms
            .annotations()
            .get(annotations::ROLLOUT_ABORT)
            .map(String::as_str),
        undo_to_good,
        canary: &evidence,
        failed_over,
        now: Timestamp::now(),
    });
    // The live Deployment runs the last good template; a missing one (deleted by hand) is
    // recreated with the new template rather than left absent.
    let kept_template = match decision.stable {
        StableTemplate::Keep => live
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .map(|s| s.template.clone()),
        StableTemplate::Desired => None,
    };
    let built = &desired.deployment;
    let canary = match decision.canary {
        CanaryAction::Run { replicas } => {
            CanaryChange::Apply(Box::new(build_canary(built, &revision, replicas)))
        }
        CanaryAction::Halted => CanaryChange::Apply(Box::new(build_canary(built, &revision, 0))),
        CanaryAction::Absent => CanaryChange::Delete {
            look_up: previous.is_some_and(|r| r.canary_revision.is_some()),
        },
    };
    Ok(RolloutPlan {
        previous: previous.cloned(),
        decision,
        kept_template,
        canary,
    })
}

/// The status the rollout is decided on. The cache can lag behind a status this reconciler
/// wrote a moment ago (a promotion or a rollback whose watch event has not arrived yet), and a
/// reconcile woken by the canary's deletion would then judge a promoted release's terminating
/// canary as failing and roll it back. So while the cache says an analysis is under way, the
/// status is read from the API server: one GET per reconcile during an analysis.
/// The cached status with `status.rollout` as our last status write left it, when the cache
/// has not caught up with that write yet (`unseen`): a reconcile that starts between the write
/// and its watch event decides from where the rollout stands, so it does not record the same
/// step in the history again. The rest (the failover engine's part) stays the cache's.
fn with_unseen_rollout(
    cached: Option<MicroServiceStatus>,
    unseen: Option<MicroServiceStatus>,
) -> Option<MicroServiceStatus> {
    match unseen {
        Some(written) => {
            let mut status = cached.unwrap_or_default();
            status.rollout = written.rollout;
            Some(status)
        }
        None => cached,
    }
}

async fn current_status(
    ctx: &Context,
    ms: &MicroService,
    v: &ValidatedSpec,
    guarded: bool,
) -> Result<Option<MicroServiceStatus>, Error> {
    let cached_analysing = ms
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .is_some_and(|r| r.phase == RolloutPhase::Analyzing);
    if !(guarded && cached_analysing) {
        return Ok(with_unseen_rollout(
            ms.status.clone(),
            ctx.stores.own_writes.unseen_status(ms),
        ));
    }
    let api: Api<MicroService> = Api::namespaced(ctx.client.clone(), &v.namespace);
    let fresh = api
        .get_opt(&v.name)
        .await
        .map_err(|e| Error::kube(format!("get MicroService {}", v.name), e))?;
    Ok(fresh.and_then(|m| m.status))
}

/// The canary pods (and stable pods' verdicts) of the MicroService, with the canary and
/// stable pods' latencies from its request figures.
async fn gather(
    ctx: &Context,
    status: Option<&MicroServiceStatus>,
    v: &ValidatedSpec,
) -> Result<CanaryEvidence, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &v.namespace);
    let lp = ListParams::default().labels(&format!("{}={}", labels::INSTANCE, v.name));
    let pods = api
        .list(&lp)
        .await
        .map_err(|e| Error::kube(format!("list pods of {}", v.name), e))?;
    let verdicts = status
        .and_then(|s| s.failover.as_ref())
        .map(|f| f.pods.as_slice())
        .unwrap_or_default();
    let traffic = status.and_then(|s| s.traffic.as_ref());
    Ok(CanaryEvidence::from_pods(&pods.items, verdicts).with_traffic(traffic))
}

#[cfg(test)]
mod tests {
    use flotilla_crds::{FailoverStatus, MicroServiceStatus, RolloutStatus};

    use super::with_unseen_rollout;

    fn rollout(stable: &str) -> RolloutStatus {
        RolloutStatus {
            stable_revision: Some(stable.into()),
            ..RolloutStatus::default()
        }
    }

    /// A reconcile that starts before the cache shows our status write decides from the
    /// rollout that write left, and keeps the cache's failover part; with nothing unseen, the
    /// cache's status is used as it is.
    #[test]
    fn the_unseen_rollout_replaces_the_cached_one() {
        let cached = MicroServiceStatus {
            rollout: None,
            failover: Some(FailoverStatus::default()),
            ..MicroServiceStatus::default()
        };
        let written = MicroServiceStatus {
            rollout: Some(rollout("abc")),
            ..MicroServiceStatus::default()
        };
        let seen = with_unseen_rollout(Some(cached.clone()), Some(written.clone()));
        let seen = seen.expect("a status");
        assert_eq!(seen.rollout, Some(rollout("abc")));
        assert_eq!(seen.failover, cached.failover);
        assert_eq!(
            with_unseen_rollout(Some(cached.clone()), None),
            Some(cached)
        );
        assert_eq!(
            with_unseen_rollout(None, Some(written)).and_then(|s| s.rollout),
            Some(rollout("abc"))
        );
    }
}
