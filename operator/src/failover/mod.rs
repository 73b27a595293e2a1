//! Health-aware traffic: probe every pod of failover-enabled MicroServices, eject failing pods
//! from their Service, and fail a whole service over to its fallback.
//!
//! Pipeline (each stage hands values to the next; only the ends talk to the network):
//! - `source`: the replica's shared MicroService cache and a reflector on Flotilla's pods, turned
//!   into the engine's `inventory`.
//! - `engine`: keeps one `pod_health` state machine per pod and schedules `probe`s (readiness over
//!   HTTP or gRPC, plus bounded metrics `scrape`s feeding `error_rate`). Runs on every replica so
//!   a new leader has warm verdicts.
//!   Pods that support it also keep a `readiness_watch` open, on which they report their own
//!   readiness changes at once and whose connection tells when they die.
//! - `decide`: pure; verdicts + policy + clock → desired membership and active target.
//! - `sticky`: pure; ejected pods whose scraped request counters keep rising (clients pinned to
//!   them by old connections), and which one to restart when the service opts in.
//! - `traffic` (with `histogram`): pure; each pod's scrapes over a window, the request figures of
//!   a service (requests per second, error ratio, p99 latency) for `status.traffic`, and when
//!   they are worth a write. Services that report traffic without being probed have their pods
//!   only scraped.
//! - `writer`: the one task that applies decisions (pod membership labels, status, Events), only
//!   while leader and only when something differs.
//!
//! Traffic membership: the Service of a failover-enabled MicroService selects on
//! `serves.flotilla.rs/<name>: "true"`, which the pod template sets, so Kubernetes keeps adding
//! and dropping pods on its own when Flotilla is down; Flotilla only flips the label.

mod adapters;
pub mod decide;
pub mod engine;
pub mod error_rate;
pub mod error_spans;
pub mod histogram;
pub mod inventory;
pub mod metrics;
pub mod outputs;
pub mod plan;
pub mod pod_health;
pub mod policy;
pub mod probe;
pub mod promtext;
pub mod readiness_watch;
pub mod scrape;
pub mod source;
pub mod sticky;
pub mod traffic;
pub mod writer;

#[cfg(test)]
mod safety_tests;

use std::sync::Arc;

use kube::Client;
use prometheus::{IntCounterVec, Registry};

use crate::cache::MicroServices;
use crate::events::EventSink;
use crate::health::Heartbeat;
use crate::notify::Notifier;
use crate::verdict_keys::VerdictKeys;
use crate::write::Leadership;

/// Why the failover engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its metrics could not be registered (e.g. registered twice).
    #[error("registering failover metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The prober thread or its runtime could not be created.
    #[error("starting the prober thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The running failover tasks. Dropping it stops them (the prober thread ends once the watch
/// task feeding it is gone).
#[derive(Debug)]
pub struct Failover {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _prober: std::thread::JoinHandle<()>,
}

impl Drop for Failover {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The operator's settings the failover tasks follow.
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch only this namespace; `None` watches all.
    pub watch_namespace: Option<String>,
    /// The keys that sign traffic verdicts.
    pub verdict_keys: Arc<VerdictKeys>,
    /// Whether `stickyConnections: Restart` may evict pods.
    pub sticky_restarts: bool,
    /// Whether readiness watches are kept open on pods that support them.
    pub readiness_watch: bool,
    /// Where the writer's failover, failback and flapping Events are also notified.
    pub notifier: Notifier,
    /// Counts the writer's Events by reason (`flotilla_events_total`).
    pub events: IntCounterVec,
}

/// Starts the watches, the prober/decider engine and the writer, with metrics registered in
/// `registry`, reading MicroServices from the replica's shared cache. The writer writes and the
/// prober sends verdicts only while `leadership` says this replica leads; the prober runs on
/// every replica so a new leader has warm verdicts.
pub fn spawn(
    client: Client,
    registry: &Registry,
    options: Options,
    microservices: MicroServices,
    leadership: Leadership,
    heartbeat: Heartbeat,
) -> Result<Failover, StartError> {
    let metrics = metrics::register(registry)?;
    let (inventory, source_task) =
        source::spawn(client.clone(), options.watch_namespace, microservices);
    let (outputs, prober) = engine::spawn(
        inventory.clone(),
        metrics.clone(),
        engine::EngineConfig {
            heartbeat,
            verdicts: Some(engine::VerdictSigning {
                keys: options.verdict_keys,
                leadership: leadership.clone(),
            }),
            sticky_restarts: options.sticky_restarts,
            watch: options.readiness_watch,
            ..engine::EngineConfig::default()
        },
    )?;
    let recorder = EventSink::new(client.clone(), writer::reporter())
        .with_notifier(options.notifier)
        .counting(options.events);
    let writer_task = writer::spawn(
        client,
        inventory,
        outputs,
        leadership,
        metrics,
        writer::WriterConfig::default(),
        recorder,
    );
    Ok(Failover {
        tasks: vec![source_task, writer_task],
        _prober: prober,
    })
}
