//! Publishing Events (`events.k8s.io/v1`) the way client-go's events recorder does: the same
//! Event again (same type, reason, action, note and object) within [`SERIES_WINDOW`] counts as a
//! repeat of the first (`series.count`; `kubectl describe` shows `(x3 over 2m)`), while an Event
//! with a new note is a new Event.
//!
//! kube-runtime's `Recorder` leaves the note out of that key, so a later Event with the same
//! reason but a different message (a second release's `RolloutStarted`, a second pod `Ejected`)
//! only bumps the count of the first one, which keeps showing the first message.
//!
//! An Event created anew (not a repeat counted on an earlier one) is also handed to the
//! [`Notifier`], which only queues it: a webhook never slows publishing. Every Event the sink is
//! asked to publish, repeats included, is counted in `flotilla_events_total{reason}` (see
//! [`crate::metrics::event_reason_label`]), which alerts on failovers, flapping and rollbacks
//! read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::Client;
use prometheus::IntCounterVec;

use crate::metrics::event_reason_label;
use crate::notify::Notifier;

/// How long a published Event takes repeats into its series (client-go and kube-runtime: 6 min).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// How often entries past the window are dropped from the cache.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// What makes two Events the same Event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: String,
    action: String,
    note: Option<String>,
    /// Namespace, kind, name and uid of the object the Event is about.
    regarding: [Option<String>; 4],
}

/// The Event already published for a key.
#[derive(Debug, Clone)]
struct Published {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

#[derive(Debug)]
struct Cache {
    entries: HashMap<Key, Published>,
    pruned: Instant,
}

/// Publishes Events for one reporting controller; clones share the repeat cache.
#[derive(Clone)]
pub struct EventSink {
    client: Client,
    reporter: Reporter,
    cache: Arc<Mutex<Cache>>,
    notifier: Notifier,
    counter: Option<IntCounterVec>,
}

impl EventSink {
    /// A sink reporting as `reporter` (its instance, or else the controller, is the
    /// `reportingInstance`).
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            cache: Arc::new(Mutex::new(Cache {
                entries: HashMap::new(),
                pruned: Instant::now(),
            })),
            notifier: Notifier::disabled(),
            counter: None,
        }
    }

    /// The same sink, also notifying `notifier` of every Event it creates.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// The same sink, also counting every Event it publishes in `counter` (the operator's
    /// `flotilla_events_total{reason}`).
    pub fn counting(mut self, counter: IntCounterVec) -> Self {
        self.counter = Some(counter);
        self
    }

    /// Publishes `ev` about `regarding`: a new Event, or one more repeat of the same one.
    ///
    /// The Event is counted before the API server answers: what happened is counted even when
    /// the Event cannot be stored.
    ///
    /// # Errors
    /// The API server's error when it refuses the Event.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        if let Some(counter) = &self.counter {
            counter
                .with_label_values(&[event_reason_label(&ev.reason)])
                .inc();
        }
        let key = key_of(ev, regarding);
        let now = Instant::now();
        let repeat = self.repeat_of(&key, now);
        if let Some(p) = &repeat {
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &p.namespace);
            let series = serde_json::json!({"series": EventSeries {
                count: p.count,
                last_observed_time: MicroTime(Timestamp::now()),
            }});
            match api
                .patch(&p.name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Gone (expired, deleted): publish it anew.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    self.forget(&key);
                    return Err(e);
                }
            }
        }
        let event = self.new_event(ev, regarding);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let created = api.create(&PostParams::default(), &event).await;
        if let Ok(created) = &created {
            // As stored: the time in microseconds, as `kubectl get events` shows it.
            self.notifier.notify(created);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match created {
            Ok(created) => {
                cache.entries.insert(
                    key,
                    Published {
                        namespace,
                        name: created.metadata.name.unwrap_or_default(),
                        count: 1,
                        last: now,
                    },
                );
                Ok(())
            }
            Err(e) => {
                cache.entries.remove(&key);
                Err(e)
            }
        }
    }

    /// Counts one more repeat of `key` when it was published within the window.
    fn repeat_of(&self, key: &Key, now: Instant) -> Option<Published> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(cache.pruned) >= PRUNE_EVERY {
            cache
                .entries
                .retain(|_, p| now.duration_since(p.last) < SERIES_WINDOW);
            cache.pruned = now;
        }
        let p = cache
            .entries
            .get_mut(key)
            .filter(|p| now.duration_since(p.last) < SERIES_WINDOW)?;
        p.count = p.count.saturating_add(1);
        p.last = now;
        Some(p.clone())
    }

    fn forget(&self, key: &Key) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.entries.remove(key);
    }

    fn new_event(&self, ev: &Event, regarding: &ObjectReference) -> K8sEvent {
        let now = Timestamp::now();
        let base = regarding
            .name
            .as_deref()
            .unwrap_or(&self.reporter.controller);
        K8sEvent {
            metadata: ObjectMeta {
                namespace: Some(
                    regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                name: Some(format!("{base}.{:x}", now.as_nanosecond())),
                ..ObjectMeta::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..K8sEvent::default()
        }
    }
}

fn key_of(ev: &Event, regarding: &ObjectReference) -> Key {
    Key {
        warning: ev.type_ == EventType::Warning,
        reason: ev.reason.clone(),
        action: ev.action.clone(),
        note: ev.note.clone(),
        regarding: [
            regarding.namespace.clone(),
            regarding.kind.clone(),
            regarding.name.clone(),
            regarding.uid.clone(),
        ],
    }
}
