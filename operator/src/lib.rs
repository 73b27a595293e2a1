//! The Flotilla operator: reconciles MicroServices into Deployments, Services, ConfigMaps and
//! HorizontalPodAutoscalers, and keeps them converged.
//!
//! Pipeline per MicroService: [`validate`] → [`build`] → [`apply`] → [`status`]; only the ends
//! talk to the API server. [`run`] wires the controller, leader election, metrics and health
//! endpoints; the `flotilla-operator` binary is a thin CLI over this library, and tests call
//! [`run`] in-process.

pub mod apply;
pub mod build;
pub mod cli;
pub mod config;
pub mod controller;
pub mod error;
pub mod failover;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod rollout;
pub mod status;
pub mod telemetry;
pub mod validate;

use std::future::Future;

use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use rand::Rng;
use tracing::{info, warn};

pub use config::OperatorConfig;
pub use error::Error;

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
/// reconciles before releasing the lease. Returns an error if the lease is lost.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = metrics::Metrics::new().map_err(|e| Error::Config(format!("metrics: {e}")))?;
    let readiness = http::Readiness::default();
    let shutdown = shutdown.boxed().shared();
    let identity = config.identity.clone().unwrap_or_else(default_identity);
    // Health-aware traffic: probes on every replica, writes only while leading.
    let failover = failover::spawn(
        client.clone(),
        metrics.registry(),
        config.watch_namespace.clone(),
    )
    .map_err(|e| Error::Config(format!("failover metrics: {e}")))?;

    let server = match config.metrics_addr {
        Some(addr) => {
            let (bound, fut) =
                http::serve(addr, metrics.clone(), readiness.clone(), shutdown.clone()).await?;
            info!(%bound, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(fut))
        }
        None => None,
    };

    let result = if config.leader_election {
        let ns = config
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| client.default_namespace().to_string());
        let elector = leader::LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &ns),
            identity.clone(),
            config.lease_timing.clone(),
        );
        // A standby is ready: it serves nothing but is healthy and able to take over.
        readiness.set(true);
        info!(namespace = %ns, lease = leader::LEASE_NAME, %identity, "waiting for leadership");
        let mut stop = shutdown.clone();
        if elector.acquire(&mut stop).await {
            info!(%identity, "leading");
            metrics.leader.set(1);
            failover.set_leader(true);
            readiness.set(false);
            let ctrl = controller::run(
                client.clone(),
                &config,
                identity.clone(),
                metrics.clone(),
                readiness.clone(),
                shutdown.clone(),
            );
            // Keep renewing while the controller drains in-flight work after shutdown.
            let outcome = tokio::select! {
                () = ctrl => Ok(()),
                lost = elector.keep_renewing() => Err(lost),
            };
            metrics.leader.set(0);
            failover.set_leader(false);
            if outcome.is_ok() {
                if let Err(e) = elector.release().await {
                    warn!(error = %e, "releasing the lease failed; it will expire");
                } else {
                    info!("lease released");
                }
            }
            outcome
        } else {
            Ok(())
        }
    } else {
        metrics.leader.set(1);
        failover.set_leader(true);
        controller::run(
            client,
            &config,
            identity,
            metrics.clone(),
            readiness.clone(),
            shutdown.clone(),
        )
        .await;
        Ok(())
    };
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
