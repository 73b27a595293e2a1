//! The reconciler: validate → build → apply → status for one MicroService, and the error
//! policy that separates permanent errors (report, wait for a change) from transient ones
//! (requeue with backoff).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_crds::MicroService;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use rand::Rng;
use tracing::{info, instrument, warn};

use crate::apply::{apply_child, delete_child, hand_over_replicas, Outcome};
use crate::build::{build, config_map_name, DesiredResources};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::rollout::step::{self as rollout, RolloutStep};
use crate::status::{self, StatusInputs};
use crate::validate::{validate, ValidatedSpec};

/// How often a converged MicroService is looked at again even without events, to catch
/// anything a watch missed.
pub const RESYNC: Duration = Duration::from_secs(300);
/// First retry delay after a transient error; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The reconciler's caches: MicroServices and the children Flotilla manages (label-filtered).
#[derive(Clone)]
pub struct Stores {
    /// All watched MicroServices.
    pub microservices: Store<MicroService>,
    /// Deployments labelled `managed-by: flotilla`.
    pub deployments: Store<Deployment>,
    /// Services labelled `managed-by: flotilla`.
    pub services: Store<Service>,
    /// ConfigMaps labelled `managed-by: flotilla`.
    pub config_maps: Store<ConfigMap>,
    /// HPAs labelled `managed-by: flotilla`.
    pub hpas: Store<HorizontalPodAutoscaler>,
    /// One flag per cache, set when its initial list is in.
    pub synced: Vec<Synced>,
}

/// Whether one cache has completed its initial list, observable by any number of tasks.
///
/// kube-runtime's `Store::wait_until_ready` wakes only the task that polled it last, so two tasks
/// waiting on the same store at once (the readiness reporter and a reconcile) can wait forever.
/// This flag is set from the watch stream itself, after the reflector has applied the event.
#[derive(Clone, Debug)]
pub struct Synced(tokio::sync::watch::Receiver<bool>);

impl Synced {
    /// A flag and the setter to call on the stream's `InitDone` event.
    pub fn new() -> (SyncedSetter, Synced) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (SyncedSetter(Arc::new(tx)), Synced(rx))
    }

    /// Waits until the flag is set; false if its setter is gone first.
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        let synced = rx.wait_for(|synced| *synced).await.is_ok();
        synced
    }
}

/// Sets a [`Synced`] flag; cloned into the watch stream of the cache it describes.
#[derive(Clone, Debug)]
pub struct SyncedSetter(Arc<tokio::sync::watch::Sender<bool>>);

impl SyncedSetter {
    /// Marks the cache as listed.
    pub fn set(&self) {
        self.0.send_replace(true);
    }
}

impl Stores {
    /// Waits until every cache has completed its initial list.
    pub async fn ready(&self) -> bool {
        futures::future::join_all(self.synced.iter().map(Synced::wait))
            .await
            .into_iter()
            .all(|ok| ok)
    }

    fn record_sizes(&self, m: &Metrics) {
        for (kind, n) in [
            ("MicroService", self.microservices.len()),
            ("Deployment", self.deployments.len()),
            ("Service", self.services.len()),
            ("ConfigMap", self.config_maps.len()),
            ("HorizontalPodAutoscaler", self.hpas.len()),
        ] {
            m.managed_objects
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Shared state of all reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event publisher (events.k8s.io).
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Caches.
    pub stores: Stores,
    /// Consecutive transient failures per MicroService, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<MicroService>, u32>>,
}

impl Context {
    /// A context over the given client, recorder, metrics and caches.
    pub fn new(client: Client, recorder: Recorder, metrics: Metrics, stores: Stores) -> Self {
        Self {
            client,
            recorder,
            metrics,
            stores,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn next_backoff(&self, key: ObjectRef<MicroService>) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    fn reset_backoff(&self, key: &ObjectRef<MicroService>) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Publishes an Event about `ms`; a failure to publish is logged, not returned.
    pub(crate) async fn publish(
        &self,
        ms: &MicroService,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &ms.object_ref(&())).await {
            warn!(error = %e, "publishing event failed");
        }
    }
}

/// Retry delay after `n` consecutive failures: exponential from 500 ms to 5 min, ±20 % jitter.
pub fn backoff(n: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(20)));
    let capped = exp.min(BACKOFF_MAX);
    let jitter = rand::rng().random_range(0.8..1.2);
    capped.mul_f64(jitter)
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Reconciles one MicroService.
#[instrument(skip_all, fields(namespace = ms.namespace().unwrap_or_default(), name = ms.name_any()))]
pub async fn reconcile(ms: Arc<MicroService>, ctx: Arc<Context>) -> Result<Action, Error> {
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

async fn reconcile_inner(ms: &MicroService, ctx: &Context) -> Result<Action, Error> {
    if ms.metadata.deletion_timestamp.is_some() {
        // Children carry owner references; the garbage collector removes them.
        return Ok(Action::await_change());
    }
    let ns = ms
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    if ms.uid().is_none() {
        return Err(Error::MissingField("metadata.uid"));
    }
    let api: Api<MicroService> = Api::namespaced(ctx.client.clone(), &ns);
    let stores = &ctx.stores;
    let lookup = |dep: &str| {
        stores
            .microservices
            .get(&ObjectRef::new(dep).within(&ns))
            .map(|m| m.spec.service.port)
    };
    let validated = match validate(ms, None, &lookup) {
        Ok(v) => v,
        Err(invalid) => {
            let msg = invalid.to_string();
            write_status(&api, ms, ctx, None, None, &[], Some(&msg)).await?;
            return Err(Error::InvalidSpec(invalid));
        }
    };
    let mut desired = build(&validated.spec);
    let rollout = rollout::prepare(ctx, ms, &validated.spec, &mut desired).await?;
    let deployment = match apply_all(ctx, ms, &validated.spec, desired).await {
        Ok(d) => d,
        Err(e) if e.is_permanent() => {
            let msg = e.to_string();
            let missing = &validated.missing_dependencies;
            write_status(&api, ms, ctx, None, None, missing, Some(&msg)).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    rollout::finish(ctx, ms, &validated.spec, &rollout).await?;
    let missing = &validated.missing_dependencies;
    write_status(
        &api,
        ms,
        ctx,
        Some((&validated.spec, &rollout)),
        Some(&deployment),
        missing,
        None,
    )
    .await?;
    Ok(Action::requeue(
        rollout.requeue_after().map_or(RESYNC, |r| r.min(RESYNC)),
    ))
}

async fn write_status(
    api: &Api<MicroService>,
    ms: &MicroService,
    ctx: &Context,
    spec: Option<(&ValidatedSpec, &RolloutStep)>,
    applied: Option<&Deployment>,
    missing: &[String],
    invalid: Option<&str>,
) -> Result<(), Error> {
    let rollout = spec.map(|(_, r)| r);
    let spec = spec.map(|(v, _)| v);
    let name = ms.name_any();
    let ns = ms.namespace().unwrap_or_default();
    // The apply response is fresher than the cache; without one, use the cache.
    let cached = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&name).within(&ns));
    let deployment = applied.or(cached.as_deref());
    let t = now();
    let spec_replicas = match spec {
        Some(v) if v.spec.autoscaling.is_some() => None,
        Some(v) => Some(v.spec.replicas),
        None if ms.spec.autoscaling.is_some() => None,
        None => Some(ms.spec.replicas),
    };
    let mut computed = status::compute(StatusInputs {
        generation: ms.metadata.generation,
        name: &name,
        spec_replicas,
        deployment,
        missing_dependencies: missing,
        invalid,
        previous: ms.status.as_ref(),
        now: &t,
    });
    rollout::annotate_status(&mut computed, rollout, ms.status.as_ref(), &t);
    if !status::needs_write(&computed, ms.status.as_ref()) {
        return Ok(());
    }
    status::write(api, ms, &computed).await?;
    let newly_degraded = computed
        .conditions
        .iter()
        .find(|c| c.type_ == flotilla_crds::conditions::DEGRADED)
        .filter(|c| c.status == flotilla_crds::conditions::TRUE)
        .filter(|c| {
            let before = ms.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|p| p.type_ == c.type_)
                    .map(|p| (p.status.clone(), p.reason.clone()))
            });
            before != Some((c.status.clone(), c.reason.clone()))
        });
    if let Some(c) = newly_degraded {
        ctx.publish(
            ms,
            EventType::Warning,
            &c.reason,
            "Reconcile",
            c.message.clone(),
        )
        .await;
    }
    Ok(())
}

/// Counts a child write and records an Event when something changed.
pub(crate) async fn record(
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
    let reason = match outcome {
        Outcome::Unchanged => return,
        Outcome::Created => "Created",
        Outcome::Updated => "Updated",
        Outcome::Deleted => "Deleted",
    };
    info!(
        kind,
        child = name,
        outcome = outcome.as_str(),
        "child written"
    );
    let action = if outcome == Outcome::Deleted {
        "Delete"
    } else {
        "Apply"
    };
    ctx.publish(
        ms,
        EventType::Normal,
        reason,
        action,
        format!("{kind} {name} {}", outcome.as_str()),
    )
    .await;
}

/// Applies every desired child and deletes the unwanted ones; returns the Deployment.
async fn apply_all(
    ctx: &Context,
    ms: &MicroService,
    v: &ValidatedSpec,
    desired: DesiredResources,
) -> Result<Deployment, Error> {
    let DesiredResources {
        deployment,
        service,
        config_map,
        hpa,
    } = desired;
    let client = ctx.client.clone();
    let ns = v.namespace.as_str();
    let owner_uid = v.owner.as_ref().map(|o| o.uid.as_str());

    // ConfigMap first: the pods reference it.
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm_name = config_map_name(&v.name);
    let live_cm = ctx
        .stores
        .config_maps
        .get(&ObjectRef::new(&cm_name).within(ns));
    let outcome = match config_map {
        Some(cm) => apply_child(&cm_api, cm, live_cm.as_deref()).await?.1,
        None => delete_child(&cm_api, live_cm.as_deref(), owner_uid).await?,
    };
    record(ctx, ms, "ConfigMap", &cm_name, outcome).await;

    let dep_api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let live_dep = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&v.name).within(ns));
    if deployment
        .spec
        .as_ref()
        .is_some_and(|s| s.replicas.is_none())
    {
        if let Some(live) = live_dep.as_deref() {
            if hand_over_replicas(&dep_api, live).await? {
                info!("replica count handed over to the autoscaler");
            }
        }
    }
    let (applied_dep, outcome) = apply_child(&dep_api, deployment, live_dep.as_deref()).await?;
    record(ctx, ms, "Deployment", &v.name, outcome).await;

    let svc_api: Api<Service> = Api::namespaced(client.clone(), ns);
    let live_svc = ctx.stores.services.get(&ObjectRef::new(&v.name).within(ns));
    let (_, outcome) = apply_child(&svc_api, service, live_svc.as_deref()).await?;
    record(ctx, ms, "Service", &v.name, outcome).await;

    let hpa_api: Api<HorizontalPodAutoscaler> = Api::namespaced(client, ns);
    let live_hpa = ctx.stores.hpas.get(&ObjectRef::new(&v.name).within(ns));
    let outcome = match hpa {
        Some(h) => apply_child(&hpa_api, h, live_hpa.as_deref()).await?.1,
        None => delete_child(&hpa_api, live_hpa.as_deref(), owner_uid).await?,
    };
    record(ctx, ms, "HorizontalPodAutoscaler", &v.name, outcome).await;
    Ok(applied_dep)
}

/// Permanent errors wait for the MicroService to change; transient ones are retried with
/// exponential backoff. Every failure is counted by category and reported as an Event.
pub fn error_policy(ms: Arc<MicroService>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .with_label_values(&[err.category()])
        .inc();
    warn!(
        namespace = ms.namespace().unwrap_or_default(),
        name = ms.name_any(),
        error = %err,
        permanent = err.is_permanent(),
        "reconcile failed"
    );
    let reason = err.event_reason();
    let note = err.to_string();
    let ev_ctx = ctx.clone();
    let ev_ms = ms.clone();
    tokio::spawn(async move {
        ev_ctx
            .publish(&ev_ms, EventType::Warning, reason, "Reconcile", note)
            .await;
    });
    if err.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(ctx.next_backoff(ObjectRef::from_obj(ms.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff doubles from 500 ms and stops at 5 minutes (within jitter).
    #[test]
    fn backoff_grows_and_caps() {
        let b1 = backoff(1);
        assert!(
            b1 >= Duration::from_millis(400) && b1 <= Duration::from_millis(600),
            "{b1:?}"
        );
        let b3 = backoff(3);
        assert!(
            b3 >= Duration::from_millis(1600) && b3 <= Duration::from_millis(2400),
            "{b3:?}"
        );
        let big = backoff(50);
        assert!(
            big <= Duration::from_secs(360) && big >= Duration::from_secs(240),
            "{big:?}"
        );
    }
}
