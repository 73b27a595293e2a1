//! Failover as clients that keep their connections see it, on kubesim with real service
//! processes: a pooled keep-alive HTTP client (reqwest) against `users` and a gRPC client
//! (tonic) against `orders` move to the fallback when every primary pod fails and back when
//! they recover, counted per target from the pods' own request counters; and a pod that ignores
//! the traffic verdict is reported as sticky and, with `stickyConnections: Restart`, restarted.

use std::time::Duration;

use anyhow::Result;
use flotilla_crds::StickyConnections;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::PostParams;

use crate::failover_common::clients::{api_requests_of, create_orders, Client, Kind};
use crate::failover_common::sim::*;

/// Requests every 20 ms: enough to see a pinned connection within a second.
const EVERY: Duration = Duration::from_millis(20);

/// Waits until `pods` answer at least `n` more API requests while `others` answer none, i.e.
/// the client's traffic is on `pods`. Counts over a window that starts when this is called.
async fn traffic_moves_to(
    sim: &Sim,
    what: &str,
    pods: &[Pod],
    others: &[Pod],
    n: f64,
) -> Result<()> {
    sim.poll(what, || async {
        let (a0, b0) = (
            api_requests_of(pods, PORT).await?,
            api_requests_of(others, PORT).await?,
        );
        // Elapsed time is the measure: the requests each group served in one second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (a1, b1) = (
            api_requests_of(pods, PORT).await?,
            api_requests_of(others, PORT).await?,
        );
        Ok((a1 - a0 >= n && b1 - b0 == 0.0).then_some(()))
    })
    .await
}

/// Fails every primary pod, waits for the switch and for the client's traffic to be on the
/// fallback only, then recovers them and waits for the traffic to be back on the primary only.
async fn fail_over_and_back(
    sim: &Sim,
    client: &Client,
    primary_svc: &str,
    primary: &[Pod],
    fallback: &[Pod],
) -> Result<()> {
    sim.poll("steady traffic on the primary", || async {
        Ok(client.last_ok(20).then_some(()))
    })
    .await?;
    traffic_moves_to(sim, "traffic on the primary only", primary, fallback, 10.0).await?;
    for p in primary {
        set_fault(p, r#"{"unhealthy": true, "errorRate": 1.0}"#).await?;
    }
    sim.wait("status says fallback", || async {
        Ok((sim.active(primary_svc).await?.as_deref() == Some("fallback")).then_some(()))
    })
    .await?;
    // The primary answers every API call with an error, so requests that succeed again went to
    // the fallback; the counters say the same from the server side.
    sim.poll("the client succeeds again", || async {
        Ok(client.last_ok(25).then_some(()))
    })
    .await?;
    traffic_moves_to(sim, "traffic on the fallback only", fallback, primary, 10.0).await?;
    for p in primary {
        clear_fault(p).await?;
    }
    sim.wait("status says primary", || async {
        Ok((sim.active(primary_svc).await?.as_deref() == Some("primary")).then_some(()))
    })
    .await?;
    traffic_moves_to(
        sim,
        "traffic back on the primary only",
        primary,
        fallback,
        10.0,
    )
    .await?;
    assert!(client.last_ok(10), "the client keeps succeeding");
    // The pods honour the verdict, so the scraped counters of ejected pods never kept rising.
    let reasons = sim.event_reasons(primary_svc).await?;
    assert!(
        !reasons.iter().any(|r| r == "StickyConnections"),
        "no sticky pod: {reasons:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_pooled_keep_alive_client_moves_to_the_fallback_and_back() -> Result<()> {
    // A reqwest client reusing keep-alive connections to the primary's cluster IP ends up on the
    // fallback's pods after a failover and on the primary's after the failback, because ejected
    // pods close their persistent connections.
    let sim = Sim::start("failover-pooled").await?;
    sim.create_users("users-backup", 2, |_| {}).await?;
    sim.create_users("users", 2, |s| {
        s.failover.enabled = true;
        s.failover.fallback = Some("users-backup".into());
        s.failover.recover_after_seconds = 2;
        // Ejected pods are scraped too, so a sticky connection would be reported.
        s.failover.scrape_metrics = true;
    })
    .await?;
    let primary = sim.ready_pods("users", 2).await?;
    let fallback = sim.ready_pods("users-backup", 2).await?;
    let client = Client::start(Kind::Pooled, sim.vip("users").await?, EVERY).await?;
    fail_over_and_back(&sim, &client, "users", &primary, &fallback).await?;
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_grpc_client_moves_to_the_fallback_and_back() -> Result<()> {
    // One tonic channel (one HTTP/2 connection) to the orders cluster IP follows the traffic to
    // the fallback and back: ejected pods send GOAWAY and the channel reconnects.
    let sim = Sim::start("failover-grpc").await?;
    create_orders(&sim, "orders-backup", 2, &[], |_| {}).await?;
    create_orders(&sim, "orders", 2, &[], |s| {
        s.failover.enabled = true;
        s.failover.fallback = Some("orders-backup".into());
        s.failover.recover_after_seconds = 2;
        s.failover.scrape_metrics = true;
    })
    .await?;
    let primary = sim.ready_pods("orders", 2).await?;
    let fallback = sim.ready_pods("orders-backup", 2).await?;
    let client = Client::start(Kind::Grpc, sim.vip("orders").await?, EVERY).await?;
    fail_over_and_back(&sim, &client, "orders", &primary, &fallback).await?;
    sim.shutdown().await;
    Ok(())
}

/// A failed-over `orders` whose primary pods ignore the traffic verdict, with a gRPC client
/// pinned to one of them: the sim, its primary and fallback pods, the client and the pod
/// reported sticky. `before_fault` runs once the pods are ready, before they fail.
async fn failed_over_with_a_sticky_pod(
    test: &str,
    before_fault: impl AsyncFnOnce(&Sim) -> Result<()>,
) -> Result<(Sim, Vec<Pod>, Vec<Pod>, Client, flotilla_crds::PodHealth)> {
    let sim = Sim::start(test).await?;
    create_orders(&sim, "orders-backup", 2, &[], |_| {}).await?;
    create_orders(&sim, "orders", 2, &[("TRAFFIC_VERDICT", "ignore")], |s| {
        s.failover.enabled = true;
        s.failover.fallback = Some("orders-backup".into());
        s.failover.recover_after_seconds = 600;
        s.failover.sticky_connections = StickyConnections::Restart;
    })
    .await?;
    let primary = sim.ready_pods("orders", 2).await?;
    let fallback = sim.ready_pods("orders-backup", 2).await?;
    before_fault(&sim).await?;
    let client = Client::start(Kind::Grpc, sim.vip("orders").await?, EVERY).await?;
    sim.poll("steady traffic", || async {
        Ok(client.last_ok(20).then_some(()))
    })
    .await?;
    // Unready but still answering API calls: without the restart the client would stay on it.
    for p in &primary {
        set_fault(p, r#"{"unhealthy": true}"#).await?;
    }
    sim.wait("status says fallback", || async {
        Ok((sim.active("orders").await?.as_deref() == Some("fallback")).then_some(()))
    })
    .await?;
    let sticky = sim
        .wait("a primary pod reported sticky in status", || async {
            let ms = sim.msvcs().get("orders").await?;
            let pods = ms.status.and_then(|s| s.failover).map(|f| f.pods);
            Ok(pods.into_iter().flatten().find(|p| {
                p.sticky_connections == Some(true)
                    && p.requests_while_ejected.is_some_and(|n| n >= 3)
            }))
        })
        .await?;
    Ok((sim, primary, fallback, client, sticky))
}

/// The names of a MicroService's pods.
async fn pod_names(sim: &Sim, svc: &str) -> Result<Vec<String>> {
    Ok(sim
        .pods_of(svc)
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// The `lastStickyRestartTime` of the MicroService's status.
async fn last_sticky_restart(sim: &Sim, svc: &str) -> Result<Option<String>> {
    let ms = sim.msvcs().get(svc).await?;
    Ok(ms
        .status
        .and_then(|s| s.failover)
        .and_then(|f| f.last_sticky_restart_time)
        .map(|t| t.0.to_string()))
}

#[tokio::test]
async fn a_pod_that_keeps_its_connections_is_reported_and_restarted() -> Result<()> {
    // A primary that ignores the traffic verdict keeps the gRPC client's connection after a
    // failover: Flotilla sees its request counter rising while it is out of traffic, reports it
    // (status evidence, Event) and, as asked, evicts it once (the time recorded in status); the
    // client then reaches the fallback.
    let (sim, primary, fallback, client, sticky) =
        failed_over_with_a_sticky_pod("failover-sticky", async |_| Ok(())).await?;
    sim.wait("the sticky pod evicted", || async {
        let names = pod_names(&sim, "orders").await?;
        Ok((!names.contains(&sticky.name)).then_some(()))
    })
    .await?;
    let reasons = sim.event_reasons("orders").await?;
    for want in ["StickyConnections", "StickyPodRestarted"] {
        assert!(reasons.iter().any(|r| r == want), "{want} in {reasons:?}");
    }
    let restarts = reasons
        .iter()
        .filter(|r| *r == "StickyPodRestarted")
        .count();
    assert_eq!(
        restarts, 1,
        "one restart within the rate limit: {reasons:?}"
    );
    assert!(
        last_sticky_restart(&sim, "orders").await?.is_some(),
        "the restart's time is in status"
    );
    let others: Vec<Pod> = primary
        .iter()
        .filter(|p| p.metadata.name.as_deref() != Some(sticky.name.as_str()))
        .cloned()
        .collect();
    traffic_moves_to(
        &sim,
        "the client's traffic on the fallback",
        &fallback,
        &others,
        10.0,
    )
    .await?;
    assert!(client.last_ok(10), "the client succeeds on the fallback");
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_disruption_budget_without_room_keeps_the_sticky_pod() -> Result<()> {
    // Restarts go through the Eviction API, so a PodDisruptionBudget that allows no disruption
    // keeps the sticky pod: the refusal is a Warning Event, the pod stays, and the attempt's
    // time is in status (it counts for the rate limit like a restart).
    let budget = async |sim: &Sim| -> Result<()> {
        let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "orders" },
            "spec": {
                "minAvailable": 2,
                "selector": { "matchLabels": { "app.kubernetes.io/instance": "orders" } }
            }
        }))?;
        sim.api::<PodDisruptionBudget>()
            .create(&PostParams::default(), &pdb)
            .await?;
        Ok(())
    };
    let (sim, _primary, _fallback, _client, sticky) =
        failed_over_with_a_sticky_pod("failover-sticky-budget", budget).await?;
    let note = sim
        .wait("the eviction refused", || async {
            let events = sim.events_of("orders").await?;
            Ok(events
                .into_iter()
                .find(|(reason, _)| reason == "StickyPodRestartFailed"))
        })
        .await?
        .1;
    assert!(note.contains("PodDisruptionBudget"), "{note}");
    let names = pod_names(&sim, "orders").await?;
    assert!(
        names.contains(&sticky.name),
        "the budget kept {}: {names:?}",
        sticky.name
    );
    let reasons = sim.event_reasons("orders").await?;
    assert!(
        !reasons.iter().any(|r| r == "StickyPodRestarted"),
        "{reasons:?}"
    );
    assert!(last_sticky_restart(&sim, "orders").await?.is_some());
    sim.shutdown().await;
    Ok(())
}
