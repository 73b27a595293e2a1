//! Health-aware traffic on a local cluster: kubesim runs real `users` processes as pods, the
//! operator runs in-process, faults are injected through each pod's `/admin/faults`, and
//! traffic goes through the Service's cluster IP. Each test has its own cluster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use flotilla_crds::{conditions, FailoverMode, MicroServiceSpec};
use kube::api::{Patch, PatchParams};
use kube::ResourceExt;

use crate::failover_common::sim::*;

const PRIMARY: &str = "users";
const FALLBACK: &str = "users-backup";

/// Creates the fallback (plain) and the primary (failover-enabled) services and waits until
/// both serve and the engine reports the primary healthy.
async fn two_services(
    sim: &Sim,
    replicas: i32,
    tweak: impl FnOnce(&mut flotilla_crds::MicroServiceSpec),
) -> Result<(
    Vec<k8s_openapi::api::core::v1::Pod>,
    Vec<k8s_openapi::api::core::v1::Pod>,
)> {
    sim.create_users(FALLBACK, 2, |_| {}).await?;
    sim.create_users(PRIMARY, replicas, |s| {
        s.failover.enabled = true;
        s.failover.fallback = Some(FALLBACK.into());
        tweak(s);
    })
    .await?;
    let primary = sim.ready_pods(PRIMARY, usize::try_from(replicas)?).await?;
    let fallback = sim.ready_pods(FALLBACK, 2).await?;
    let want = replicas;
    sim.wait("the engine to see the primary healthy", || async {
        let ms = sim.msvcs().get(PRIMARY).await?;
        let f = ms.status.and_then(|s| s.failover);
        Ok(f.filter(|f| f.healthy_pods == Some(want)).map(|_| ()))
    })
    .await?;
    Ok((primary, fallback))
}

fn ips(pods: &[k8s_openapi::api::core::v1::Pod]) -> BTreeSet<String> {
    pods.iter().map(pod_ip).collect()
}

async fn condition(sim: &Sim, type_: &str) -> Result<Option<(String, String)>> {
    let ms = sim.msvcs().get(PRIMARY).await?;
    Ok(ms.status.and_then(|s| {
        s.conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status, c.reason))
    }))
}

#[tokio::test]
async fn a_pod_serving_errors_is_ejected_and_traffic_stops_failing() -> Result<()> {
    // A pod whose readiness is fine but which answers 500 to its API traffic leaves the Service
    // (Flotilla flips its label; the kubelet still calls it Ready), and requests through the
    // cluster IP succeed again.
    let sim = Sim::start("failover-eject").await?;
    let (primary, _) = two_services(&sim, 2, |s| {
        s.failover.scrape_metrics = true;
        s.failover.max_error_rate = Some(0.5);
        s.failover.error_rate_window_seconds = 5;
    })
    .await?;
    let vip = sim.vip(PRIMARY).await?;
    let traffic = Traffic::start(vip, "/users", Duration::from_millis(20));
    sim.poll("steady traffic", || async {
        Ok(traffic.last_ok(20).then_some(()))
    })
    .await?;
    let (bad, good) = (&primary[0], &primary[1]);
    set_fault(bad, r#"{"errorRate": 1.0}"#).await?;
    let bad_name = bad.metadata.name.clone().unwrap_or_default();
    sim.wait("the failing pod's label flipped off", || async {
        let p = sim.pods().get(&bad_name).await?;
        Ok((serves(&p, PRIMARY).as_deref() == Some("false")).then_some(()))
    })
    .await?;
    let only_good: BTreeSet<String> = [pod_ip(good)].into();
    sim.wait("endpoints without the failing pod", || async {
        Ok((sim.ready_endpoints(PRIMARY).await? == only_good).then_some(()))
    })
    .await?;
    let p = sim.pods().get(&bad_name).await?;
    assert!(
        is_ready(&p),
        "the kubelet still considers the ejected pod ready"
    );
    sim.poll("traffic through the cluster IP stops failing", || async {
        Ok(traffic.last_ok(25).then_some(()))
    })
    .await?;
    let reasons = sim.event_reasons(PRIMARY).await?;
    assert!(
        reasons.iter().any(|r| r == "PodEjected"),
        "events: {reasons:?}"
    );
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn all_primary_pods_down_fails_over_and_fails_back_after_the_recovery_window() -> Result<()> {
    // With every primary pod unready, the fallback's pods take the primary Service's traffic;
    // when the primary recovers, traffic returns only after recoverAfterSeconds.
    let sim = Sim::start("failover-switch").await?;
    let recover = Duration::from_secs(5);
    let (primary, fallback) = two_services(&sim, 2, |s| {
        s.failover.recover_after_seconds = 5;
    })
    .await?;
    let vip = sim.vip(PRIMARY).await?;
    for p in &primary {
        set_fault(p, r#"{"unhealthy": true}"#).await?;
    }
    sim.wait("status says fallback", || async {
        Ok((sim.active(PRIMARY).await?.as_deref() == Some("fallback")).then_some(()))
    })
    .await?;
    let fallback_ips = ips(&fallback);
    sim.wait(
        "primary Service endpoints are the fallback pods",
        || async { Ok((sim.ready_endpoints(PRIMARY).await? == fallback_ips).then_some(())) },
    )
    .await?;
    sim.poll(
        "requests through the primary cluster IP succeed",
        || async {
            for _ in 0..10 {
                if http(vip, "GET", "/users", None).await? != 200 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    assert_eq!(
        condition(&sim, conditions::FAILED_OVER).await?,
        Some(("True".into(), "FailedOver".into()))
    );

    let t0 = Instant::now();
    for p in &primary {
        clear_fault(p).await?;
    }
    sim.wait("status says primary again", || async {
        Ok((sim.active(PRIMARY).await?.as_deref() == Some("primary")).then_some(()))
    })
    .await?;
    let waited = t0.elapsed();
    assert!(
        waited >= recover,
        "failed back after {waited:?}, before the {recover:?} window"
    );
    let primary_ips = ips(&primary);
    sim.wait("primary Service endpoints are the primary pods", || async {
        Ok((sim.ready_endpoints(PRIMARY).await? == primary_ips).then_some(()))
    })
    .await?;
    for f in sim.pods_of(FALLBACK).await? {
        assert_eq!(
            serves(&f, PRIMARY),
            None,
            "fallback pods lose the primary's label"
        );
    }
    let reasons = sim.event_reasons(PRIMARY).await?;
    for want in ["FailedOver", "FailedBack"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "no {want} event: {reasons:?}"
        );
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_unhealthy_fallback_is_not_used_and_ready_pods_keep_serving() -> Result<()> {
    // When probing fails every primary pod (while the kubelet says they are ready) and the
    // fallback is down too, Flotilla does not fail over and keeps the ready pods: panic.
    let sim = Sim::start("failover-panic").await?;
    let (primary, fallback) = two_services(&sim, 2, |s| {
        s.failover.scrape_metrics = true;
        s.failover.max_error_rate = Some(0.5);
        s.failover.error_rate_window_seconds = 5;
    })
    .await?;
    for f in &fallback {
        set_fault(f, r#"{"unhealthy": true}"#).await?;
    }
    sim.wait("fallback pods unready", || async {
        let pods = sim.pods_of(FALLBACK).await?;
        Ok(pods.iter().all(|p| !is_ready(p)).then_some(()))
    })
    .await?;
    let vip = sim.vip(PRIMARY).await?;
    let _traffic = Traffic::start(vip, "/users", Duration::from_millis(20));
    for p in &primary {
        set_fault(p, r#"{"errorRate": 1.0}"#).await?;
    }
    sim.wait("panic reported", || async {
        let ms = sim.msvcs().get(PRIMARY).await?;
        let f = ms.status.and_then(|s| s.failover);
        Ok(f.filter(|f| f.panic == Some(true)).map(|_| ()))
    })
    .await?;
    assert_eq!(sim.active(PRIMARY).await?.as_deref(), Some("primary"));
    assert_eq!(
        condition(&sim, conditions::FAILED_OVER).await?,
        Some(("False".into(), "Panic".into()))
    );
    // Ready pods keep serving: a pod ejected before panic set in gets its label back.
    sim.wait("every primary pod labelled to serve", || async {
        let pods = sim.pods_of(PRIMARY).await?;
        Ok(pods
            .iter()
            .all(|p| serves(p, PRIMARY).as_deref() == Some("true"))
            .then_some(()))
    })
    .await?;
    for f in sim.pods_of(FALLBACK).await? {
        assert_eq!(
            serves(&f, PRIMARY),
            None,
            "no traffic into an unhealthy fallback"
        );
    }
    // A pod ejected before the last one failed (and panic set in) is returned by its label
    // flip above; the EndpointSlice controller follows the label a moment later.
    let all_primary = ips(&primary);
    sim.wait("every ready primary pod in the endpoints", || async {
        Ok((sim.ready_endpoints(PRIMARY).await? == all_primary).then_some(()))
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn observe_mode_reports_but_never_changes_traffic() -> Result<()> {
    // In Observe mode the decision to fail over is reported (condition, Event) while no pod
    // label changes.
    let sim = Sim::start("failover-observe").await?;
    let (primary, _) = two_services(&sim, 2, |s| {
        s.failover.mode = FailoverMode::Observe;
    })
    .await?;
    for p in &primary {
        set_fault(p, r#"{"unhealthy": true}"#).await?;
    }
    sim.wait("a WouldFailOver condition", || async {
        Ok(condition(&sim, conditions::FAILED_OVER)
            .await?
            .filter(|(_, r)| r == "WouldFailOver")
            .map(|_| ()))
    })
    .await?;
    sim.wait("a WouldFailOver event", || async {
        let reasons = sim.event_reasons(PRIMARY).await?;
        Ok(reasons.iter().any(|r| r == "WouldFailOver").then_some(()))
    })
    .await?;
    assert_eq!(sim.active(PRIMARY).await?.as_deref(), Some("primary"));
    for p in sim.pods_of(PRIMARY).await? {
        assert_eq!(serves(&p, PRIMARY).as_deref(), Some("true"));
    }
    for f in sim.pods_of(FALLBACK).await? {
        assert_eq!(serves(&f, PRIMARY), None);
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_operator_restart_during_failover_keeps_the_current_target() -> Result<()> {
    // A restarted operator resumes on the fallback and still waits a full recovery window
    // before failing back, instead of flipping on its first decision.
    let sim = Sim::start("failover-restart").await?;
    let recover = Duration::from_secs(8);
    let (primary, fallback) = two_services(&sim, 2, |s| {
        s.failover.recover_after_seconds = 8;
    })
    .await?;
    for p in &primary {
        set_fault(p, r#"{"unhealthy": true}"#).await?;
    }
    sim.wait("status says fallback", || async {
        Ok((sim.active(PRIMARY).await?.as_deref() == Some("fallback")).then_some(()))
    })
    .await?;
    let fallback_ips = ips(&fallback);
    sim.wait(
        "primary Service endpoints are the fallback pods",
        || async { Ok((sim.ready_endpoints(PRIMARY).await? == fallback_ips).then_some(())) },
    )
    .await?;
    sim.stop_operator().await?;
    for p in &primary {
        clear_fault(p).await?;
    }
    sim.ready_pods(PRIMARY, 2).await?;
    sim.start_operator().await?;
    let t0 = Instant::now();
    let primary_ips = ips(&primary);
    // Ends with the failback, or early with the primary endpoints seen back inside the window.
    let early = sim
        .poll("failback after the restart", || async {
            if sim.active(PRIMARY).await?.as_deref() == Some("primary") {
                return Ok(Some(None));
            }
            if t0.elapsed() < recover {
                // Until the window has passed, no primary pod may get traffic back.
                let eps = sim.ready_endpoints(PRIMARY).await?;
                if !eps.is_disjoint(&primary_ips) {
                    return Ok(Some(Some((t0.elapsed(), eps))));
                }
            }
            Ok(None)
        })
        .await?;
    if let Some((after, eps)) = early {
        sim.print_report().await;
        bail!("endpoints changed {after:?} after the restart: {eps:?}");
    }
    let waited = t0.elapsed();
    assert!(
        waited >= recover,
        "failed back {waited:?} after the restart"
    );
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn with_the_operator_stopped_kubernetes_still_drops_and_adds_pods() -> Result<()> {
    // The membership label lives in the pod template, so without Flotilla a deleted pod leaves
    // the endpoints and pods added by scaling join them.
    let sim = Sim::start("failover-no-operator").await?;
    let (primary, _) = two_services(&sim, 2, |_| {}).await?;
    sim.stop_operator().await?;
    let gone = primary[0].metadata.name.clone().unwrap_or_default();
    let gone_ip = pod_ip(&primary[0]);
    sim.pods().delete(&gone, &Default::default()).await?;
    sim.wait(
        "the deleted pod leaves and its replacement joins",
        || async {
            let eps = sim.ready_endpoints(PRIMARY).await?;
            let pods = sim.pods_of(PRIMARY).await?;
            let ready: BTreeSet<String> = pods.iter().filter(|p| is_ready(p)).map(pod_ip).collect();
            Ok((eps.len() == 2 && !eps.contains(&gone_ip) && eps == ready).then_some(()))
        },
    )
    .await?;
    sim.deployments()
        .patch(
            PRIMARY,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
        )
        .await?;
    sim.wait("the scaled-up pod joins", || async {
        let eps = sim.ready_endpoints(PRIMARY).await?;
        Ok((eps.len() == 3).then_some(()))
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}

/// The value of `http_requests_total{route="/readyz",status="503"}` in a pod's metrics text.
fn readyz_failures(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .filter(|l| l.contains("route=\"/readyz\"") && l.contains("status=\"503\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
async fn a_noisy_pod_does_not_flap_traffic() -> Result<()> {
    // A pod whose readiness fails every other probe never reaches the failure threshold (2 in
    // a row): it keeps its membership label and the primary stays active, while its metrics
    // prove the prober did see the failures.
    let sim = Sim::start("failover-noisy").await?;
    let (primary, _) = two_services(&sim, 2, |_| {}).await?;
    let noisy = &primary[0];
    let name = noisy.metadata.name.clone().unwrap_or_default();
    set_fault(noisy, r#"{"flakyReadiness": true}"#).await?;
    let addr = pod_addr(noisy)?;
    // Watch for as long as it takes the prober to see at least eight failures (about 16
    // probes at the 500 ms default), checking every 100 ms that nothing moved.
    let start = Instant::now();
    sim.poll_within(
        "8 failing readiness checks answered by the noisy pod",
        Duration::from_secs(60),
        || async {
            let p = sim.pods().get(&name).await?;
            assert_eq!(
                serves(&p, PRIMARY).as_deref(),
                Some("true"),
                "the noisy pod was ejected after {:?}",
                start.elapsed()
            );
            assert_eq!(sim.active(PRIMARY).await?.as_deref(), Some("primary"));
            let (_, metrics) = http_text(addr, "GET", "/metrics", None).await?;
            Ok((readyz_failures(&metrics) >= 8.0).then_some(()))
        },
    )
    .await?;
    let reasons = sim.event_reasons(PRIMARY).await?;
    assert!(
        !reasons
            .iter()
            .any(|r| r == "PodEjected" || r == "FailedOver"),
        "events: {reasons:?}"
    );
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_report_left_while_the_operator_was_down_is_withdrawn() -> Result<()> {
    // Failover turned off while no operator runs: no writer is left that wrote the report, so
    // the next operator withdraws `status.failover` and the failover conditions itself.
    let sim = Sim::start("failover-stale").await?;
    two_services(&sim, 1, |_| {}).await?;
    sim.wait("the engine's report", || async {
        Ok((sim.active(PRIMARY).await?.as_deref() == Some("primary")).then_some(()))
    })
    .await?;
    sim.stop_operator().await?;
    let off = serde_json::json!({"spec": {"failover": {"enabled": false}}});
    sim.msvcs()
        .patch(PRIMARY, &PatchParams::default(), &Patch::Merge(&off))
        .await?;
    sim.start_operator().await?;
    sim.wait(
        "the report and the failover conditions withdrawn",
        || async {
            let s = sim.msvcs().get(PRIMARY).await?.status.unwrap_or_default();
            let empty = s
                .failover
                .is_none_or(|f| f == flotilla_crds::FailoverStatus::default());
            let failover_conditions = s
                .conditions
                .iter()
                .any(|c| c.type_ == conditions::FAILED_OVER || c.type_ == conditions::FLAPPING);
            Ok((empty && !failover_conditions).then_some(()))
        },
    )
    .await?;
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_withdrawn_report_leaves_the_reconcilers_status_when_the_next_report_comes() -> Result<()>
{
    // The engine's report is withdrawn when an analysis ends and comes back with the next one.
    // The withdrawal must leave the failover field manager owning nothing, or the next report
    // removes the whole status, the reconciler's rollout state included (the second release
    // then went through without an analysis). The bodies are the engine's own, on kubesim.
    use flotilla_operator::failover::inventory::ObjKey;
    use flotilla_operator::failover::plan::{status_body, withdrawal_body};
    let h = crate::support::start_without_operator("failover-withdrawal").await?;
    let ms = h
        .create(
            "users",
            MicroServiceSpec::with_image("flotilla/users:0.1.0"),
        )
        .await?;
    let key = ObjKey {
        ns: h.ns.clone(),
        name: ms.name_any(),
    };
    let api = h.msvcs();
    let apply = |manager: &'static str, body: serde_json::Value| {
        let api = api.clone();
        let name = key.name.clone();
        async move {
            let params = PatchParams::apply(manager).force();
            api.patch_status(&name, &params, &Patch::Apply(&body)).await
        }
    };
    let reconciler = status_body(
        &key,
        serde_json::json!({"observedGeneration": 1, "rollout": {"phase": "Analyzing", "stableRevision": "a"}}),
    );
    let report = status_body(&key, serde_json::json!({"failover": {"observeOnly": true}}));
    apply(flotilla_crds::FIELD_MANAGER, reconciler).await?;
    apply(flotilla_crds::FAILOVER_FIELD_MANAGER, report.clone()).await?;
    apply(flotilla_crds::FAILOVER_FIELD_MANAGER, withdrawal_body(&key)).await?;
    let withdrawn = api.get(&key.name).await?.status.unwrap_or_default();
    ensure!(withdrawn.failover.is_none(), "not withdrawn: {withdrawn:?}");
    apply(flotilla_crds::FAILOVER_FIELD_MANAGER, report).await?;
    let status = api.get(&key.name).await?.status.unwrap_or_default();
    ensure!(
        status.rollout.as_ref().map(|r| r.phase) == Some(flotilla_crds::RolloutPhase::Analyzing)
            && status.failover.is_some(),
        "after the next report: {status:?}"
    );
    h.shutdown().await;
    Ok(())
}

/// Sets `spec.failover.holdOnFallback` of the primary, as `kubectl flotilla failover` does.
async fn hold(sim: &Sim, on: bool) -> Result<()> {
    let patch = serde_json::json!({"spec": {"failover": {"holdOnFallback": on}}});
    sim.msvcs()
        .patch(PRIMARY, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The primary's `status.failover.held`.
async fn held(sim: &Sim) -> Result<bool> {
    let ms = sim.msvcs().get(PRIMARY).await?;
    Ok(ms
        .status
        .and_then(|s| s.failover)
        .and_then(|f| f.held)
        .unwrap_or(false))
}

#[tokio::test]
async fn a_maintenance_hold_moves_a_healthy_service_survives_a_restart_and_is_released(
) -> Result<()> {
    // A hold moves every request of a healthy primary to the fallback, shows in status, keeps
    // the traffic there across an operator restart, and gives it back once cleared.
    let sim = Sim::start("failover-hold").await?;
    let (primary, fallback) = two_services(&sim, 2, |s| {
        s.failover.recover_after_seconds = 1;
    })
    .await?;
    let (primary_ips, fallback_ips) = (ips(&primary), ips(&fallback));
    hold(&sim, true).await?;
    sim.wait("the hold in status and endpoints", || async {
        let on_fallback = sim.active(PRIMARY).await?.as_deref() == Some("fallback");
        let eps = sim.ready_endpoints(PRIMARY).await?;
        Ok((on_fallback && held(&sim).await? && eps == fallback_ips).then_some(()))
    })
    .await?;
    assert_eq!(
        condition(&sim, conditions::FAILED_OVER).await?,
        Some(("True".to_owned(), "HeldForMaintenance".to_owned()))
    );

    sim.stop_operator().await?;
    sim.start_operator().await?;
    // A status write only follows a change: one primary pod failing is the marker that the
    // restarted operator has decided at least once.
    set_fault(&primary[0], r#"{"unhealthy": true}"#).await?;
    sim.wait("a report from the restarted operator", || async {
        let ms = sim.msvcs().get(PRIMARY).await?;
        let f = ms.status.and_then(|s| s.failover);
        Ok(f.filter(|f| f.healthy_pods == Some(1)).map(|_| ()))
    })
    .await?;
    ensure!(
        sim.active(PRIMARY).await?.as_deref() == Some("fallback") && held(&sim).await?,
        "the restarted operator dropped the hold"
    );
    ensure!(
        sim.ready_endpoints(PRIMARY).await? == fallback_ips,
        "the restarted operator gave traffic back while held"
    );
    clear_fault(&primary[0]).await?;

    hold(&sim, false).await?;
    sim.wait("traffic back on the primary", || async {
        let on_primary = sim.active(PRIMARY).await?.as_deref() == Some("primary");
        let eps = sim.ready_endpoints(PRIMARY).await?;
        Ok((on_primary && !held(&sim).await? && eps == primary_ips).then_some(()))
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}
