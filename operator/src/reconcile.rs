//! The reconciler, read top to bottom: [`validate`] → the admission policy
//! ([`crate::admission`]) → the referenced configuration ([`config_refs::observe`]) → [`build`]
//! and its config digest → [`rollout::plan`] → [`apply_all`] and [`apply_canary`] →
//! [`history::record`] → [`status::update`], and the error policy that separates permanent errors (report in
//! status, wait for a change) from transient ones (requeue with backoff). No API calls of its
//! own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_crds::{reasons, MicroService};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use tracing::{instrument, warn};

use crate::apply::{apply_all, apply_canary};
use crate::build::build;
use crate::config_refs;
use crate::context::Context;
use crate::error::{Category, ReconcileError};
use crate::history;
use crate::rollout;
use crate::status::{self, Findings, Problem};
use crate::validate::validate;

/// How often a converged MicroService is looked at again even without events, to catch
/// anything a watch missed.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles one MicroService.
#[instrument(skip_all, fields(namespace = ms.namespace().unwrap_or_default(), name = ms.name_any()))]
pub async fn reconcile(ms: Arc<MicroService>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let start = Instant::now();
    // Children are compared with the caches, so the caches must be complete first.
    ctx.stores.ready().await;
    let result = reconcile_inner(&ms, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(start.elapsed().as_secs_f64());
    ctx.stores.record_sizes(&ctx.metrics);
    let label = if result.is_ok() { "success" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[label]).inc();
    if result.is_ok() {
        ctx.reset_backoff(&ObjectRef::from_obj(ms.as_ref()));
    }
    result
}

async fn reconcile_inner(ms: &MicroService, ctx: &Context) -> Result<Action, ReconcileError> {
    if ms.metadata.deletion_timestamp.is_some() {
        // Children carry owner references; the garbage collector removes them.
        ctx.reset_backoff(&ObjectRef::from_obj(ms));
        return Ok(Action::await_change());
    }
    let ns = ms
        .namespace()
        .ok_or(ReconcileError::MissingField("metadata.namespace"))?;
    if ms.uid().is_none() {
        return Err(ReconcileError::MissingField("metadata.uid"));
    }
    let stores = &ctx.stores;
    let lookup = |dep: &str| {
        stores
            .microservices
            .get(&ObjectRef::new(dep).within(&ns))
            .map(|m| m.spec.service.port)
    };
    let validated = match validate(ms, None, &lookup) {
        Ok(v) => v,
        Err(invalid) => return fail(ctx, ms, &[], invalid.into()).await,
    };
    if let Err(refusal) = ctx.policy.check(&validated.spec.spec) {
        return fail(ctx, ms, &[], refusal.into()).await;
    }
    let missing = &validated.missing_dependencies;
    let config = config_refs::observe(ctx, &validated.spec).await?;
    let mut desired = build(&validated.spec, &ctx.build_inputs);
    if let Some(c) = &config {
        config_refs::digest::stamp(&mut desired.deployment, &c.outcome.digest);
    }
    let revision = rollout::template_revision(&desired.deployment);
    let plan = rollout::plan(ctx, ms, &validated.spec, &desired).await?;
    let deployment = match apply_all(ctx, ms, &validated.spec, desired, &plan).await {
        Ok(d) => d,
        Err(e) if e.is_reported() => return fail(ctx, ms, missing, e).await,
        Err(e) => return Err(e),
    };
    apply_canary(ctx, ms, &validated.spec, &plan).await?;
    if let Some(note) = config
        .as_ref()
        .and_then(|c| c.announcement(already_failed(ms, &revision)))
    {
        let reason = reasons::CONFIG_CHANGED;
        ctx.publish(ms, EventType::Normal, reason, "Rollout", note)
            .await;
    }
    // The history serves people going back; a failure to record it (an installation whose
    // RBAC predates it, an API hiccup) must not stop the service from converging.
    if let Err(e) = history::record(ctx, ms, &validated.spec, &plan).await {
        warn!(error = %e, "revision history not recorded");
    }
    let sources = config.as_ref().and_then(|c| c.outcome.problem.as_ref());
    let found = Findings {
        spec: Some(&validated.spec),
        rollout: Some(&plan),
        applied: Some(&deployment),
        missing,
        sources: sources.map(|p| Problem {
            reason: p.reason,
            message: &p.message,
        }),
        problem: None,
    };
    status::update(ctx, ms, found).await?;
    let requeue = plan.requeue_after().map_or(RESYNC, |r| r.min(RESYNC));
    Ok(Action::requeue(requeue))
}

/// Whether the template of `revision` already failed its guarded analysis: its configuration
/// change was announced when it was tried.
fn already_failed(ms: &MicroService, revision: &str) -> bool {
    ms.status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .and_then(|r| r.failed_revision.as_deref())
        == Some(revision)
}

/// Reports `err` (permanent, or a refusal by RBAC) as `Degraded` and returns it. A failing status write does
/// not replace it: the result keeps its category and is retried until the status says why.
async fn fail(
    ctx: &Context,
    ms: &MicroService,
    missing: &[String],
    err: ReconcileError,
) -> Result<Action, ReconcileError> {
    let message = err.message();
    let reason = match err.category() {
        Category::ChildConflict => reasons::CHILD_CONFLICT,
        Category::Forbidden => reasons::FORBIDDEN,
        Category::PolicyRefused => reasons::POLICY_REFUSED,
        _ => reasons::INVALID_SPEC,
    };
    let found = Findings {
        spec: None,
        rollout: None,
        applied: None,
        missing,
        sources: None,
        problem: Some(Problem {
            reason,
            message: &message,
        }),
    };
    match status::update(ctx, ms, found).await {
        Ok(()) => Err(err),
        Err(status_error) => Err(ReconcileError::NotReported {
            reported: Box::new(err),
            status_error: Box::new(status_error),
        }),
    }
}

/// Permanent errors wait for the MicroService to change; transient ones are retried with
/// exponential backoff. Every failure is counted by category and reported as an Event.
pub fn error_policy(ms: Arc<MicroService>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    let category = err.category();
    ctx.metrics
        .failures
        .with_label_values(&[category.label()])
        .inc();
    warn!(
        namespace = ms.namespace().unwrap_or_default(),
        name = ms.name_any(),
        error = %err,
        permanent = err.is_permanent(),
        "reconcile failed"
    );
    let note = err.message();
    let ev_ctx = ctx.clone();
    let ev_ms = ms.clone();
    tokio::spawn(async move {
        ev_ctx
            .publish(
                &ev_ms,
                EventType::Warning,
                category.event_reason(),
                "Reconcile",
                note,
            )
            .await;
    });
    if err.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(ctx.next_backoff(ObjectRef::from_obj(ms.as_ref())))
    }
}
