//! Two operator replicas with leader election: one leads, the other takes over when the leader
//! shuts down and releases the lease.

// Each test binary uses a different part of the shared harness.
#[allow(dead_code)]
mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_operator::leader::{LeaseTiming, LEASE_NAME};
use flotilla_operator::OperatorConfig;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::*;

fn config(ns: &str, identity: &str) -> OperatorConfig {
    OperatorConfig {
        leader_election: true,
        leader_election_namespace: Some(ns.to_string()),
        identity: Some(identity.to_string()),
        lease_timing: LeaseTiming {
            lease_duration: Duration::from_secs(4),
            renew_interval: Duration::from_millis(500),
            retry_interval: Duration::from_millis(200),
        },
        ..test_config()
    }
}

async fn holder(leases: Api<Lease>) -> Result<Option<String>> {
    let l = leases.get_opt(LEASE_NAME).await?;
    Ok(l.and_then(|l| l.spec).and_then(|s| s.holder_identity))
}

#[tokio::test]
async fn standby_takes_over_when_the_leader_stops() -> Result<()> {
    // Only the lease holder reconciles; on shutdown it releases the lease and the standby leads.
    let env = start_without_operator("leader").await?;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let a = spawn_operator(&env, config(&env.ns, "op-a"));
    env.wait("op-a to lead", || async {
        Ok((holder(leases.clone()).await?.as_deref() == Some("op-a")).then_some(()))
    })
    .await?;
    let b = spawn_operator(&env, config(&env.ns, "op-b"));

    env.create("users", spec("flotilla/users:0.1.0")).await?;
    env.wait("the Deployment", || async {
        Ok(env.deployments().get_opt("users").await?)
    })
    .await?;
    assert_eq!(holder(leases.clone()).await?.as_deref(), Some("op-a"));

    // The leader stops gracefully: it returns Ok and the standby takes the lease.
    a.stop().await.context("op-a did not stop")?;
    env.wait("op-b to lead", || async {
        Ok((holder(leases.clone()).await?.as_deref() == Some("op-b")).then_some(()))
    })
    .await?;
    let lease = leases.get(LEASE_NAME).await?;
    assert!(lease.spec.and_then(|s| s.lease_transitions).unwrap_or(0) >= 1);

    // The new leader reconciles.
    env.patch_spec(
        "users",
        serde_json::json!({"image": "flotilla/users:0.2.0"}),
    )
    .await?;
    env.wait("op-b to apply the change", || async {
        let d = env.deployments().get("users").await?;
        Ok(
            (container(&d).and_then(|c| c.image).as_deref() == Some("flotilla/users:0.2.0"))
                .then_some(()),
        )
    })
    .await?;
    b.stop().await.context("op-b did not stop")?;
    Ok(())
}
