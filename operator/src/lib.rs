//! The Flotilla operator: reconciles MicroServices into Deployments, Services, ConfigMaps and
//! HorizontalPodAutoscalers, and keeps them converged.
//!
//! Pipeline per MicroService: [`validate`] → [`admission`] → [`config_refs`] → [`build`] →
//! [`rollout`] → [`apply`] → [`status`]; nothing before [`apply`] writes (the config and rollout
//! stages only read), and every write goes through [`write`].
//! [`run`] wires the controller, leader election, metrics and health endpoints; the
//! `flotilla-operator` binary is a thin CLI over this library, and tests call [`run`] in-process.

pub mod admission;
pub mod apply;
pub mod build;
pub mod cache;
pub mod cli;
pub mod config;
pub mod config_refs;
pub mod context;
pub mod controller;
pub mod error;
pub mod events;
pub mod failover;
pub mod health;
pub mod history;
pub mod http;
pub mod kube_client;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod reconcile;
pub mod render;
pub mod reverse_index;
pub mod rollout;
pub mod status;
pub mod telemetry;
pub mod validate;
pub mod verdict_keys;
pub mod write;

use std::future::Future;
use std::sync::Arc;

use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use rand::Rng;
use tracing::{info, warn};

pub use config::OperatorConfig;
pub use error::ReconcileError;
/// What [`run`] returns on failure.
pub type Error = RunError;

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The leader lease was lost (another replica holds it, or it could not be renewed before
    /// the renew deadline). Every write had stopped before this is returned.
    #[error("leadership lost: {0}")]
    LeadershipLost(String),

    /// The metrics registry rejected a metric (registered twice).
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),

    /// The failover engine could not start.
    #[error(transparent)]
    Failover(#[from] crate::failover::StartError),

    /// The metrics/health server could not bind.
    #[error(transparent)]
    Bind(#[from] crate::http::BindError),

    /// The verdict signing key could not be loaded.
    #[error(transparent)]
    VerdictKey(#[from] crate::verdict_keys::KeyError),

    /// The notification webhook is misconfigured (its URL unreadable or invalid).
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
}

/// How long queued notifications may still be delivered at shutdown; well within the chart's
/// 30 s termination grace period, after the controller has drained.
const NOTIFY_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The identity this replica uses in the Lease and in Events.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "flotilla-operator".into());
    let suffix: u32 = rand::rng().random();
    format!("{base}_{suffix:08x}")
}

/// Runs the operator until `shutdown` completes: serves metrics and health, waits for the lease
/// when leader election is on, reconciles while leader, and on shutdown finishes in-flight
/// reconciles before releasing the lease. Returns an error if the lease is lost; by then every
/// write has stopped.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let metrics = metrics::Metrics::new()?;
    let readiness = http::Readiness::default();
    let health = health::Health::new(config.stall_after);
    let shutdown = shutdown.boxed().shared();
    // One MicroService watch per replica, shared by the controller and the failover engine.
    let (microservices, ms_watch) =
        cache::MicroServices::watch(client.clone(), config.watch_namespace.as_deref());
    let ms_task = tokio::spawn(ms_watch);
    let (lead, leadership) = write::Leadership::new();
    let verdict_keys = Arc::new(load_verdict_keys(&config)?);
    // Notifications: Events are queued by whichever sink publishes them (only a leader does),
    // and one task delivers them; `notify` explains the queue.
    let (notifier, delivery) = match &config.notifications {
        Some(webhook) => {
            let (n, d) = notify::Notifier::start(webhook, metrics.notifications.clone())?;
            info!(format = ?webhook.format, reasons = ?webhook.reasons, "notifying Events to a webhook");
            (n, Some(d))
        }
        None => (notify::Notifier::disabled(), None),
    };
    // Health-aware traffic: probes on every replica, verdicts and writes only while leading.
    let failover = failover::spawn(
        client.clone(),
        metrics.registry(),
        failover::Options {
            watch_namespace: config.watch_namespace.clone(),
            verdict_keys: verdict_keys.clone(),
            sticky_restarts: config.sticky_restarts,
            readiness_watch: config.readiness_watch,
            notifier: notifier.clone(),
            events: metrics.events.clone(),
        },
        microservices.clone(),
        leadership.clone(),
        health.prober(),
    )?;

    let server = match config.metrics_addr {
        Some(addr) => {
            let endpoints = http::Endpoints {
                metrics: metrics.clone(),
                ready: readiness.clone(),
                health: health.clone(),
            };
            let (bound, fut) = http::serve(addr, endpoints, shutdown.clone()).await?;
            info!(%bound, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(fut))
        }
        None => None,
    };
    let shared = controller::Shared {
        microservices,
        leadership,
        verdict_keys,
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        health,
        notifier,
    };
    let result = if config.leader_election {
        run_elected(client, &config, shared, &lead, shutdown).await
    } else {
        let identity = config.identity.clone().unwrap_or_else(default_identity);
        metrics.leader.set(1);
        lead.lead_unbounded();
        controller::run(client, &config, identity, shared, shutdown).await;
        lead.stop();
        Ok(())
    };
    metrics.leader.set(0);
    drop(failover);
    ms_task.abort();
    if let Some(delivery) = delivery {
        delivery.finish(NOTIFY_DRAIN).await;
    }
    if let Some(server) = server {
        if result.is_ok() {
            if let Err(e) = server.await {
                warn!(error = %e, "metrics server task failed");
            }
        } else {
            server.abort();
        }
    }
    result
}

/// The configured verdict key, or one made up for this process.
fn load_verdict_keys(config: &OperatorConfig) -> Result<verdict_keys::VerdictKeys, RunError> {
    match &config.verdict_key_file {
        Some(path) => Ok(verdict_keys::VerdictKeys::from_files(
            path,
            config.verdict_next_key_file.as_deref(),
        )?),
        None => {
            if config.leader_election {
                warn!(
                    "no verdict key file: this replica signs traffic verdicts with a key of its \
                     own, so pods roll again when another replica leads; mount a shared key"
                );
            }
            Ok(verdict_keys::VerdictKeys::ephemeral())
        }
    }
}

/// Waits for the lease, then runs the controller while renewing it. The controller stops as
/// soon as renewal fails past the renew deadline; leadership has expired on its own by then.
async fn run_elected(
    client: Client,
    config: &OperatorConfig,
    shared: controller::Shared,
    lead: &write::LeadershipSetter,
    shutdown: Shared<BoxFuture<'static, ()>>,
) -> Result<(), RunError> {
    let identity = config.identity.clone().unwrap_or_else(default_identity);
    let ns = config
        .leader_election_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| client.default_namespace().to_string());
    let elector = leader::LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &ns),
        identity.clone(),
        config.lease_timing.clone(),
    )
    .with_health(shared.health.clone());
    let (metrics, readiness) = (shared.metrics.clone(), shared.readiness.clone());
    // A standby is ready: it serves nothing but is healthy and able to take over.
    readiness.set(true);
    info!(namespace = %ns, lease = leader::LEASE_NAME, %identity, "waiting for leadership");
    let mut stop = shutdown.clone();
    if !elector.acquire(&mut stop, lead).await {
        return Ok(());
    }
    info!(%identity, "leading");
    metrics.leader.set(1);
    readiness.set(false);
    let ctrl = controller::run(client, config, identity, shared, shutdown);
    // Keep renewing while the controller drains in-flight work after shutdown.
    let outcome = tokio::select! {
        () = ctrl => Ok(()),
        lost = elector.keep_renewing(lead) => Err(RunError::LeadershipLost(lost)),
    };
    lead.stop();
    metrics.leader.set(0);
    if outcome.is_ok() {
        // Refuses new writes and waits for those in flight before giving the lease up.
        match elector.release(lead).await {
            Ok(()) => info!("lease released"),
            Err(e) => warn!(error = %e, "releasing the lease failed; it will expire"),
        }
    }
    outcome
}
