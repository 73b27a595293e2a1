//! Operator replicas with leader election: one leads, the other takes over when the leader
//! shuts down and releases the lease; a Lease deleted or reset under a live leader never gives
//! a standby the lead beside it, and a Lease that cannot be recreated shows in `/healthz`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use anyhow::{bail, Context, Result};
use flotilla_operator::leader::{LeaseTiming, LEASE_NAME};
use flotilla_operator::OperatorConfig;
use flotilla_testkit::http;
use flotilla_testkit::operator::free_port;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::Api;

fn config(ns: &str, identity: &str) -> OperatorConfig {
    config_with(
        ns,
        identity,
        LeaseTiming {
            lease_duration: Duration::from_secs(4),
            renew_interval: Duration::from_millis(500),
            retry_interval: Duration::from_millis(200),
        },
    )
}

fn config_with(ns: &str, identity: &str, lease_timing: LeaseTiming) -> OperatorConfig {
    OperatorConfig {
        leader_election: true,
        leader_election_namespace: Some(ns.to_string()),
        identity: Some(identity.to_string()),
        lease_timing,
        ..test_config()
    }
}

/// The leader renews every second while a standby looks every 100 ms, so a standby that takes
/// a free or missing Lease at once gets there before the leader.
const EAGER_STANDBY: LeaseTiming = LeaseTiming {
    lease_duration: Duration::from_secs(4),
    renew_interval: Duration::from_secs(1),
    retry_interval: Duration::from_millis(100),
};

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

/// Every holder the Lease shows, in order, from a watch over `window` (and whether it was
/// deleted and came back meanwhile).
async fn holders_over(leases: &Api<Lease>, window: Duration) -> Result<Vec<Option<String>>> {
    let mut seen: Vec<Option<String>> = Vec::new();
    let stream = watcher(leases.clone(), watcher::Config::default());
    let mut stream = std::pin::pin!(stream);
    let end = tokio::time::Instant::now() + window;
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            () = tokio::time::sleep_until(end) => break,
        };
        let Some(event) = event else { break };
        let lease = match event? {
            watcher::Event::Apply(l) | watcher::Event::InitApply(l) => l,
            watcher::Event::Delete(_) => {
                seen.push(None);
                continue;
            }
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        if lease.metadata.name.as_deref() != Some(LEASE_NAME) {
            continue;
        }
        let holder = lease
            .spec
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty());
        if seen.last() != Some(&holder) {
            seen.push(holder);
        }
    }
    Ok(seen)
}

/// Starts two replicas with [`EAGER_STANDBY`] timing and waits until `op-a` leads.
async fn leader_and_standby(env: &Harness) -> Result<(InProcess, InProcess)> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let a = spawn_operator(env, config_with(&env.ns, "op-a", EAGER_STANDBY));
    env.wait("op-a to lead", || async {
        Ok((holder(leases.clone()).await?.as_deref() == Some("op-a")).then_some(()))
    })
    .await?;
    let b = spawn_operator(env, config_with(&env.ns, "op-b", EAGER_STANDBY));
    Ok((a, b))
}

/// Fails when anyone but `op-a` held the Lease.
fn only_op_a(holders: &[Option<String>]) -> Result<()> {
    let others: Vec<&String> = holders.iter().flatten().filter(|h| *h != "op-a").collect();
    if !others.is_empty() {
        bail!("the Lease was held by {others:?} while op-a led (holders in order: {holders:?})");
    }
    if holders.last() != Some(&Some("op-a".to_string())) {
        bail!("op-a does not hold the Lease at the end (holders in order: {holders:?})");
    }
    Ok(())
}

#[tokio::test]
async fn a_deleted_lease_is_recreated_by_its_leader_and_not_taken_by_a_standby() -> Result<()> {
    // Deleting the Lease under a live leader never gives the standby the lead beside it: the
    // leader recreates it at its next renewal, and a standby that finds no Lease waits a full
    // lease duration before creating one.
    let env = start_without_operator("lease-deleted").await?;
    env.run(|env| {
        Box::pin(async move {
            let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
            let (a, b) = leader_and_standby(env).await?;
            leases.delete(LEASE_NAME, &DeleteParams::default()).await?;
            let holders = holders_over(&leases, EAGER_STANDBY.lease_duration * 2).await?;
            only_op_a(&holders)?;
            a.stop().await.context("op-a did not stop cleanly")?;
            b.stop().await.context("op-b did not stop cleanly")?;
            Ok(())
        })
    })
    .await
}

#[tokio::test]
async fn a_reset_lease_is_not_taken_by_a_standby_while_its_leader_lives() -> Result<()> {
    // A Lease whose holder and renew time someone cleared looks free, but its leader may still
    // be writing: the standby waits a full lease duration of an unchanged record, and the leader
    // writes itself back at its next renewal long before that.
    let env = start_without_operator("lease-reset").await?;
    env.run(|env| {
        Box::pin(async move {
            let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
            let (a, b) = leader_and_standby(env).await?;
            let mut lease = leases.get(LEASE_NAME).await?;
            lease.spec = Some(LeaseSpec {
                lease_duration_seconds: lease.spec.and_then(|s| s.lease_duration_seconds),
                ..LeaseSpec::default()
            });
            leases
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await?;
            let holders = holders_over(&leases, EAGER_STANDBY.lease_duration * 2).await?;
            only_op_a(&holders)?;
            a.stop().await.context("op-a did not stop cleanly")?;
            b.stop().await.context("op-b did not stop cleanly")?;
            Ok(())
        })
    })
    .await
}

/// A user with the chart's Lease permissions (get, update and patch of the one Lease, no
/// create) and everything else the operator may touch.
async fn grant_chart_lease_rbac(env: &Harness, user: &str) -> Result<()> {
    let subject = serde_json::json!([{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]);
    let everything_else: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": user},
        "rules": [{
            "apiGroups": ["", "apps", "autoscaling", "flotilla.rs", "events.k8s.io",
                          "discovery.k8s.io", "policy"],
            "resources": ["*"],
            "verbs": ["*"],
        }],
    }))?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
        "subjects": subject,
    }))?;
    let lease_role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "lease"},
        "rules": [{
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [LEASE_NAME],
            "verbs": ["get", "update", "patch"],
        }],
    }))?;
    let lease_binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "lease"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease"},
        "subjects": subject,
    }))?;
    let pp = PostParams::default();
    Api::<ClusterRole>::all(env.client.clone())
        .create(&pp, &everything_else)
        .await?;
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&pp, &binding)
        .await?;
    Api::<Role>::namespaced(env.client.clone(), &env.ns)
        .create(&pp, &lease_role)
        .await?;
    Api::<RoleBinding>::namespaced(env.client.clone(), &env.ns)
        .create(&pp, &lease_binding)
        .await?;
    Ok(())
}

/// A client for the harness's cluster acting as `user`.
async fn client_as(env: &Harness, user: &str) -> Result<kube::Client> {
    let path = env.local().context("needs kubesim")?.kubeconfig_path();
    let mut config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(path)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    config.auth_info.impersonate = Some(user.to_string());
    Ok(kube::Client::try_from(config)?)
}

/// The Lease as the chart creates it: no spec, nobody holds it.
async fn create_chart_lease(leases: &Api<Lease>) -> Result<()> {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            ..ObjectMeta::default()
        },
        spec: None,
    };
    leases.create(&PostParams::default(), &lease).await?;
    Ok(())
}

/// A replica acting as `user`, serving `/healthz` (its URL is returned) on a free port.
async fn start_as(
    env: &Harness,
    user: &str,
    who: &str,
    timing: &LeaseTiming,
) -> Result<(InProcess, String)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let config = OperatorConfig {
        metrics_addr: Some(addr),
        ..config_with(&env.ns, who, timing.clone())
    };
    let client = client_as(env, user).await?;
    let op = InProcess::spawn(client, move |c, s| flotilla_operator::run(c, config, s));
    Ok((op, format!("http://{addr}/healthz")))
}

#[tokio::test]
async fn healthz_reports_a_deleted_lease_that_may_not_be_recreated() -> Result<()> {
    // With the chart's RBAC no replica may create the Lease: when it is deleted, the leader says
    // so in `/healthz` until it stops leading at its renew deadline, a standby says so once the
    // Lease has been missing for a lease duration, and a Lease created again (as `helm
    // upgrade` does) is taken and makes the standby healthy.
    let env = start_without_operator("lease-forbidden").await?;
    env.run(|env| {
        Box::pin(async move {
            let user = format!("lease-test-{}", env.ns);
            grant_chart_lease_rbac(env, &user).await?;
            let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
            create_chart_lease(&leases).await?;
            let timing = LeaseTiming {
                lease_duration: Duration::from_secs(6),
                renew_interval: Duration::from_secs(1),
                retry_interval: Duration::from_millis(250),
            };
            let (a, a_health) = start_as(env, &user, "op-a", &timing).await?;
            env.wait("op-a to lead", || async {
                Ok((holder(leases.clone()).await?.as_deref() == Some("op-a")).then_some(()))
            })
            .await?;
            let (b, b_health) = start_as(env, &user, "op-b", &timing).await?;
            env.poll("op-b to serve /healthz", || async {
                Ok(http::get(&b_health)
                    .await
                    .ok()
                    .map(|r| r.status == 200)
                    .unwrap_or(false)
                    .then_some(()))
            })
            .await?;

            leases.delete(LEASE_NAME, &DeleteParams::default()).await?;
            let deleted = Instant::now();
            let reason = |url: String| async move {
                let r = http::get(&url).await;
                Ok(r.ok()
                    .filter(|r| r.status == 503 && r.body.contains(LEASE_NAME))
                    .map(|r| r.body))
            };
            let a_reason = env
                .poll("op-a's /healthz to report the missing Lease", || {
                    reason(a_health.clone())
                })
                .await?;
            eprintln!("op-a: {a_reason} (after {:?})", deleted.elapsed());
            let b_reason = env
                .poll("op-b's /healthz to report the missing Lease", || {
                    reason(b_health.clone())
                })
                .await?;
            eprintln!("op-b: {b_reason} (after {:?})", deleted.elapsed());
            if a.stop().await.is_ok() {
                bail!("op-a kept leading without a Lease it could renew");
            }

            create_chart_lease(&leases).await?;
            env.wait("op-b to lead the recreated Lease", || async {
                Ok((holder(leases.clone()).await?.as_deref() == Some("op-b")).then_some(()))
            })
            .await?;
            env.poll("op-b's /healthz to be ok again", || async {
                Ok(http::get(&b_health)
                    .await
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|_| ()))
            })
            .await?;
            b.stop().await.context("op-b did not stop cleanly")?;
            Ok(())
        })
    })
    .await
}
