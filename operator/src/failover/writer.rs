//! The one writer of health-aware traffic: applies the engine's desired state to the cluster while
//! this replica is the leader — pod membership labels (JSON merge patch), `status.failover` with
//! the `FailedOver`/`Flapping` conditions and the request figures of `status.traffic` (one
//! server-side apply, field manager `flotilla-failover`; the engine publishes new figures at most
//! once an interval, see `traffic.rs`), and an Event for every ejection, return, failover and failback; and the eviction of a failing
//! sticky pod when the engine picks one (`stickyConnections: Restart`, rate-limited by the engine;
//! the restart's time goes into status before the eviction, which names the pod's UID).
//!
//! Leadership is re-checked immediately before each write (it lapses on its own at the lease's
//! renew deadline) and bounds the write's timeout, so a replica that lost the lease to a hanging
//! API server stops writing before a standby takes over. Every write has a timeout and a metric, and nothing is written when nothing differs (see
//! `plan.rs`). A failed write is retried on the next pass (at most `resync` later) because the
//! plan is recomputed from what the cluster shows. Observe mode writes status and Events only.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta, Preconditions};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use flotilla_crds::{MicroService, API_VERSION, FAILOVER_FIELD_MANAGER, KIND};

use super::decide::{Change, Membership};
use super::engine::EngineOutputs;
use super::inventory::{Inventory, ObjKey};
use super::metrics::Metrics;
use super::outputs::{Desired, Notice};
use super::plan::{self, LabelPatch, StatusPlan};
use super::policy::Mode;
use crate::events::EventSink;
use crate::write::{count_write, result_label, Leadership};

/// Reasons of the writer's service-level Events (the notifier picks its defaults from these).
pub mod reason {
    pub use flotilla_crds::event_reasons::{
        FAILED_BACK, FAILED_OVER, FLAPPING, POD_EJECTED, POD_RETURNED,
    };
}

/// Tunables of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Timeout of each API write.
    pub write_timeout: Duration,
    /// How often the writer re-checks everything even without new decisions (retries failed writes).
    pub resync: Duration,
    /// Minimum time between two status writes that only refresh evidence (failure counts, ratios).
    pub evidence_interval: Duration,
    /// The same for a service whose guarded rollout is under analysis: the analysis judges the
    /// canary by that evidence (its 5xx ratio), so it cannot wait `evidence_interval`.
    pub analysis_evidence_interval: Duration,
    /// A write just made is not repeated for this long while the watch catches up.
    pub echo_grace: Duration,
    /// Label writes in flight at once (a failover relabels every pod of two services).
    pub concurrency: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            write_timeout: Duration::from_secs(5),
            resync: Duration::from_secs(1),
            evidence_interval: Duration::from_secs(10),
            analysis_evidence_interval: Duration::from_millis(250),
            echo_grace: Duration::from_secs(3),
            concurrency: 16,
        }
    }
}

struct Writer {
    client: Client,
    recorder: EventSink,
    metrics: Metrics,
    cfg: WriterConfig,
    leadership: Leadership,
    recent_labels: HashMap<(ObjKey, String), (Option<&'static str>, Instant)>,
    recent_status: HashMap<ObjKey, (Value, Instant)>,
    last_status_write: HashMap<ObjKey, Instant>,
    /// Services whose `status.failover` this writer has written; when one leaves the desired
    /// state (failover disabled, rollout analysis over) its fields are withdrawn.
    reported: HashSet<ObjKey>,
    /// Reports withdrawn lately, and when (not withdrawn again while the watch catches up).
    withdrawn: HashMap<ObjKey, Instant>,
}

/// The reporting controller of the writer's Events: the failover field manager, and the pod.
pub fn reporter() -> Reporter {
    Reporter {
        controller: FAILOVER_FIELD_MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// Starts the writer, publishing its Events through `recorder` (made with [`reporter`]). It
/// stops when the engine's outputs close.
pub fn spawn(
    client: Client,
    inventory: watch::Receiver<Arc<Inventory>>,
    outputs: EngineOutputs,
    leader: Leadership,
    metrics: Metrics,
    cfg: WriterConfig,
    recorder: EventSink,
) -> tokio::task::JoinHandle<()> {
    let w = Writer {
        recorder,
        client,
        metrics,
        cfg,
        leadership: leader.clone(),
        recent_labels: HashMap::new(),
        recent_status: HashMap::new(),
        last_status_write: HashMap::new(),
        reported: HashSet::new(),
        withdrawn: HashMap::new(),
    };
    tokio::spawn(w.run(inventory, outputs, leader))
}

/// The object reference of the MicroService an Event is about.
fn microservice_ref(svc: &ObjKey, inv: &Inventory) -> ObjectReference {
    ObjectReference {
        api_version: Some(API_VERSION.to_owned()),
        kind: Some(KIND.to_owned()),
        name: Some(svc.name.clone()),
        namespace: Some(svc.ns.clone()),
        uid: inv.services.get(svc).and_then(|s| s.uid.clone()),
        ..ObjectReference::default()
    }
}

impl Writer {
    async fn run(
        mut self,
        mut inventory: watch::Receiver<Arc<Inventory>>,
        outputs: EngineOutputs,
        mut leader: Leadership,
    ) {
        let EngineOutputs {
            mut desired,
            mut notices,
        } = outputs;
        let mut tick = tokio::time::interval(self.cfg.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: Vec<Notice> = Vec::new();
        loop {
            tokio::select! {
                r = desired.changed() => if r.is_err() { break },
                r = inventory.changed() => if r.is_err() { break },
                r = leader.changed() => if r.is_err() { break },
                n = notices.recv() => match n {
                    Some(n) => pending.push(n),
                    None => break,
                },
                _ = tick.tick() => {}
            }
            drain(&mut notices, &mut pending);
            if !leader.is_leading() {
                pending.clear();
                continue;
            }
            let want = desired.borrow_and_update().clone();
            let inv = inventory.borrow_and_update().clone();
            self.apply_labels(&want, &inv).await;
            let labels_written = Instant::now();
            self.apply_status(&want, &inv).await;
            for n in pending.drain(..) {
                self.announce(n, &inv, labels_written).await;
            }
        }
    }

    async fn apply_labels(&mut self, want: &Desired, inv: &Inventory) {
        let now = Instant::now();
        let grace = self.cfg.echo_grace;
        self.recent_labels
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < grace);
        let mut patches: Vec<LabelPatch> = Vec::new();
        for svc in want.services.values().filter(|s| s.mode == Mode::Enforce) {
            for p in plan::label_patches(svc, inv) {
                let k = (p.pod.clone(), p.key.clone());
                if self
                    .recent_labels
                    .get(&k)
                    .is_some_and(|(v, _)| *v == p.value)
                {
                    continue;
                }
                patches.push(p);
            }
        }
        if patches.is_empty() {
            return;
        }
        let results: Vec<(LabelPatch, bool)> = futures::stream::iter(patches)
            .map(|p| self.patch_label(p))
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await;
        for (p, ok) in results {
            if ok {
                self.recent_labels
                    .insert((p.pod, p.key), (p.value, Instant::now()));
            }
        }
    }

    async fn patch_label(&self, p: LabelPatch) -> (LabelPatch, bool) {
        if !self.leadership.is_leading() {
            return (p, false);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &p.pod.ns);
        let params = PatchParams {
            field_manager: Some(FAILOVER_FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let body = p.body();
        let r = self
            .leadership
            .write(
                self.cfg.write_timeout,
                api.patch(&p.pod.name, &params, &Patch::Merge(&body)),
            )
            .await;
        let label = result_label(&r);
        count_write(&self.metrics.writes, "label", label);
        if label != "ok" {
            tracing::warn!(pod = %p.pod, key = %p.key, result = label, "membership label write failed; retrying");
        }
        (p, label == "ok")
    }

    async fn apply_status(&mut self, want: &Desired, inv: &Inventory) {
        let now = Instant::now();
        let time = Time(jiff::Timestamp::now());
        for svc in want.services.values() {
            let Some(info) = inv.services.get(&svc.key) else {
                continue;
            };
            let body = match plan::status_plan(svc, info, &time) {
                StatusPlan::Unchanged => continue,
                StatusPlan::Now(b) => b,
                StatusPlan::Evidence(b) => {
                    let interval = if info.analysing {
                        self.cfg.analysis_evidence_interval
                    } else {
                        self.cfg.evidence_interval
                    };
                    let recent = self
                        .last_status_write
                        .get(&svc.key)
                        .is_some_and(|t| now.saturating_duration_since(*t) < interval);
                    if recent {
                        continue;
                    }
                    b
                }
            };
            // The same body was just written: wait for the watch to show it.
            if self.recent_status.get(&svc.key).is_some_and(|(b, t)| {
                same_status(b, &body) && now.saturating_duration_since(*t) < self.cfg.echo_grace
            }) {
                continue;
            }
            if !self.leadership.is_leading() {
                return;
            }
            let label = self.apply_status_body(&svc.key, &body, false).await;
            if label == "ok" {
                self.recent_status.insert(svc.key.clone(), (body, now));
                self.last_status_write.insert(svc.key.clone(), now);
                self.reported.insert(svc.key.clone());
                self.withdrawn.remove(&svc.key);
            } else {
                tracing::warn!(service = %svc.key, result = label, "failover status write failed; retrying");
            }
        }
        self.recent_status
            .retain(|k, _| want.services.contains_key(k));
        self.last_status_write
            .retain(|k, _| want.services.contains_key(k));
        // Reports to withdraw: those this writer made on services that left the desired state,
        // and those the inventory still shows on services nobody decides (failover turned off,
        // or an analysis ended, while the operator was down or another replica led). A report
        // just withdrawn is not withdrawn again while the watch catches up.
        let grace = self.cfg.echo_grace;
        self.withdrawn
            .retain(|_, t| now.saturating_duration_since(*t) < grace);
        let gone: BTreeSet<ObjKey> = self
            .reported
            .iter()
            .chain(&inv.stale_reports)
            .filter(|k| !want.services.contains_key(*k) && !self.withdrawn.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if self.withdraw_status(&key).await {
                if !self.reported.remove(&key) {
                    tracing::info!(service = %key, "withdrew a failover report left by an earlier writer");
                }
                self.withdrawn.insert(key, now);
            }
        }
    }

    /// Applies nothing as the failover field manager, which removes `status.failover` and the
    /// engine's conditions from a service it no longer decides. `true` when done (or the
    /// MicroService is gone).
    async fn withdraw_status(&self, key: &ObjKey) -> bool {
        if !self.leadership.is_leading() {
            return false;
        }
        let body = plan::withdrawal_body(key);
        self.apply_status_body(key, &body, true).await == "ok"
    }

    /// Server-side applies `body` to the MicroService's status as the failover field manager,
    /// within the leadership's bounds, and counts the result; returns its metric label. With
    /// `gone_is_ok`, a MicroService that no longer exists counts as done.
    async fn apply_status_body(
        &self,
        key: &ObjKey,
        body: &Value,
        gone_is_ok: bool,
    ) -> &'static str {
        let api: Api<MicroService> = Api::namespaced(self.client.clone(), &key.ns);
        let params = PatchParams::apply(FAILOVER_FIELD_MANAGER).force();
        let r = self
            .leadership
            .write(
                self.cfg.write_timeout,
                api.patch_status(&key.name, &params, &Patch::Apply(body)),
            )
            .await;
        let gone = gone_is_ok && matches!(&r, Ok(Err(kube::Error::Api(e))) if e.code == 404);
        let label = if gone { "ok" } else { result_label(&r) };
        count_write(&self.metrics.writes, "status", label);
        label
    }

    /// Publishes the Event for one notice (and updates the counters and detection histogram).
    async fn announce(&self, n: Notice, inv: &Inventory, labels_written: Instant) {
        let (svc, event) = match n {
            Notice::Service {
                svc,
                mode,
                change,
                decided_at,
            } => {
                if let Change::FailedOver {
                    detected_from: Some(first),
                    ..
                } = &change
                {
                    self.metrics
                        .record_failover_timeline(*first, decided_at, labels_written);
                }
                (svc, self.service_event(mode, change))
            }
            Notice::Held { svc, target } => {
                let note = format!(
                    "traffic flipped too often; holding {} (see the Flapping condition)",
                    target.as_str()
                );
                (svc, event(EventType::Warning, reason::FLAPPING, note))
            }
            Notice::Pod {
                svc,
                mode,
                pod,
                fallback,
                to,
                detected_from,
                evidence,
            } => {
                let observe = mode == Mode::Observe;
                if let (Membership::Out, false, false, Some(t)) =
                    (to, fallback, observe, detected_from)
                {
                    self.metrics
                        .detection
                        .with_label_values(&["eject"])
                        .observe(t.elapsed().as_secs_f64());
                }
                let note = format!("pod {} (last probe: {evidence})", pod.name);
                (svc, pod_event(observe, fallback, to, note))
            }
            Notice::Sticky {
                svc,
                pod,
                requests,
                restart,
            } => {
                let action = if restart {
                    "it will be restarted when the rate limit allows"
                } else {
                    "set failover.stickyConnections: Restart to restart such pods"
                };
                let note = format!(
                    "pod {} is out of traffic but answered {requests} requests since: clients \
                     keep connections opened before the ejection; {action}",
                    pod.name
                );
                (svc, event(EventType::Warning, "StickyConnections", note))
            }
            Notice::Restart {
                svc,
                pod,
                uid,
                requests,
                at,
            } => {
                let result = match self.record_restart(&svc, &at).await {
                    "ok" => self.evict_pod(&pod, &uid).await,
                    failed => failed,
                };
                let (reason, note) = match result {
                    "ok" => (
                        "StickyPodRestarted",
                        format!(
                            "evicted failing pod {} ({requests} requests while out of traffic) \
                             so its clients reconnect to serving pods",
                            pod.name
                        ),
                    ),
                    "disruption_budget" => (
                        "StickyPodRestartFailed",
                        format!(
                            "not evicting sticky pod {}: its PodDisruptionBudget allows no \
                             disruption now",
                            pod.name
                        ),
                    ),
                    other => (
                        "StickyPodRestartFailed",
                        format!("evicting sticky pod {} failed ({other})", pod.name),
                    ),
                };
                (svc, event(EventType::Warning, reason, note))
            }
        };
        let reference = microservice_ref(&svc, inv);
        if !self.leadership.is_leading() {
            return;
        }
        let r = self
            .leadership
            .write(
                self.cfg.write_timeout,
                self.recorder.publish(&event, &reference),
            )
            .await;
        count_write(&self.metrics.writes, "event", result_label(&r));
    }

    /// Records the restart's time in the service's status *before* evicting, so whichever
    /// replica leads next sees it and keeps the rate limit; the result label. A merge patch sets
    /// that one field (the next full apply carries the same value).
    async fn record_restart(&self, svc: &ObjKey, at: &Time) -> &'static str {
        if !self.leadership.is_leading() {
            return "not_leading";
        }
        let api: Api<MicroService> = Api::namespaced(self.client.clone(), &svc.ns);
        let body = serde_json::json!({
            "status": { "failover": { "lastStickyRestartTime": at } }
        });
        let params = PatchParams {
            field_manager: Some(FAILOVER_FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let r = self
            .leadership
            .write(
                self.cfg.write_timeout,
                api.patch_status(&svc.name, &params, &Patch::Merge(&body)),
            )
            .await;
        let label = result_label(&r);
        count_write(&self.metrics.writes, "status", label);
        label
    }

    /// Evicts a sticky pod through the Eviction API, so PodDisruptionBudgets apply, naming its
    /// UID so a newer pod of the same name is never hit (its Deployment replaces it); if still
    /// leading. The result label: `disruption_budget` when a budget refused (429).
    ///
    /// The Eviction is posted as the typed `policy/v1` object: kube's `Api::evict` sends its
    /// delete options under a key the API server ignores, which would drop the UID precondition.
    async fn evict_pod(&self, pod: &ObjKey, uid: &str) -> &'static str {
        if !self.leadership.is_leading() {
            return "not_leading";
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.ns);
        let eviction = Eviction {
            metadata: ObjectMeta {
                name: Some(pod.name.clone()),
                namespace: Some(pod.ns.clone()),
                ..ObjectMeta::default()
            },
            delete_options: Some(DeleteOptions {
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_owned()),
                    resource_version: None,
                }),
                ..DeleteOptions::default()
            }),
        };
        let r = self
            .leadership
            .write(
                self.cfg.write_timeout,
                api.create_subresource::<_, kube::core::Status>(
                    "eviction",
                    &pod.name,
                    &PostParams::default(),
                    &eviction,
                ),
            )
            .await;
        // A refusal can also come as a 201 carrying a Failure status (a pod with two budgets).
        let r = r.map(|inner| {
            inner.and_then(|status| {
                if status.is_failure() {
                    Err(kube::Error::Api(Box::new(status)))
                } else {
                    Ok(status)
                }
            })
        });
        let label = match &r {
            Ok(Err(kube::Error::Api(e))) if e.code == 429 => "disruption_budget",
            _ => result_label(&r),
        };
        self.metrics
            .sticky_restarts
            .with_label_values(&[label])
            .inc();
        count_write(&self.metrics.writes, "evict", label);
        if label != "ok" {
            tracing::warn!(pod = %pod, result = label, "evicting a sticky pod failed");
        }
        label
    }

    /// The Event of a failover or failback, counting it (and, when enforced, its detection time).
    fn service_event(&self, mode: Mode, change: Change) -> Event {
        let observe = mode == Mode::Observe;
        match change {
            Change::FailedOver {
                reason: why,
                detected_from,
            } => {
                self.metrics.failovers.inc();
                if let Some(t) = detected_from.filter(|_| !observe) {
                    self.metrics
                        .detection
                        .with_label_values(&["failover"])
                        .observe(t.elapsed().as_secs_f64());
                }
                let r = if observe {
                    "WouldFailOver"
                } else {
                    reason::FAILED_OVER
                };
                event(EventType::Warning, r, why)
            }
            Change::FailedBack { reason: why } => {
                self.metrics.failbacks.inc();
                let r = if observe {
                    "WouldFailBack"
                } else {
                    reason::FAILED_BACK
                };
                event(EventType::Normal, r, why)
            }
        }
    }
}

/// The Event of one pod's membership change; only an ejection from the primary is a warning.
fn pod_event(observe: bool, fallback: bool, to: Membership, note: String) -> Event {
    let reason = match (observe, fallback, to) {
        (false, false, Membership::Out) => reason::POD_EJECTED,
        (false, false, Membership::In) => reason::POD_RETURNED,
        (false, true, Membership::In) => "FallbackPodAdded",
        (false, true, Membership::Out) => "FallbackPodRemoved",
        (true, false, Membership::Out) => "WouldEjectPod",
        (true, false, Membership::In) => "WouldReturnPod",
        (true, true, Membership::In) => "WouldAddFallbackPod",
        (true, true, Membership::Out) => "WouldRemoveFallbackPod",
    };
    let kind = if to == Membership::Out && !fallback {
        EventType::Warning
    } else {
        EventType::Normal
    };
    event(kind, reason, note)
}

fn event(type_: EventType, reason: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Traffic".to_owned(),
        secondary: None,
    }
}

/// Two status bodies are the same write when they differ at most in condition transition times.
fn same_status(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

fn drain(rx: &mut mpsc::Receiver<Notice>, into: &mut Vec<Notice>) {
    while let Ok(n) = rx.try_recv() {
        into.push(n);
    }
}
