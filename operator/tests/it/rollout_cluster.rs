//! Guarded rollouts on a local cluster: kubesim runs real `users` processes as pods, the operator
//! runs in-process, and a client polls the Service's cluster IP throughout each release, counting
//! failed requests. A healthy release is promoted; one whose image cannot be pulled and one whose
//! pods fail readiness are rolled back with the stable pods untouched.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use flotilla_crds::{
    conditions, labels, FailoverStatus, MicroService, MicroServiceSpec, RolloutPhase,
    RolloutStatus, RolloutStrategy,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::Api;

use crate::failover_common::sim::*;

const NAME: &str = "users";
const CANARY: &str = "users-canary";

/// A guarded `users` with two stable pods and a short analysis.
async fn guarded(sim: &Sim, analysis_seconds: i32) -> Result<()> {
    guarded_with(sim, analysis_seconds, |_| {}).await
}

/// [`guarded`], with `tweak` applied to the spec last.
async fn guarded_with(
    sim: &Sim,
    analysis_seconds: i32,
    tweak: impl FnOnce(&mut MicroServiceSpec),
) -> Result<()> {
    sim.create_users(NAME, 2, |s| {
        s.rollout.strategy = RolloutStrategy::Guarded;
        s.rollout.analysis_seconds = analysis_seconds;
        s.rollout.ready_timeout_seconds = 20;
        tweak(s);
    })
    .await?;
    sim.ready_pods(NAME, 2).await?;
    sim.wait("the first template to be stable", || async {
        Ok(rollout(sim)
            .await?
            .filter(|r| r.phase == RolloutPhase::Stable))
    })
    .await?;
    Ok(())
}

async fn rollout(sim: &Sim) -> Result<Option<RolloutStatus>> {
    Ok(sim.msvcs().get(NAME).await?.status.and_then(|s| s.rollout))
}

fn deployments(sim: &Sim) -> Api<Deployment> {
    Api::namespaced(sim.client.clone(), &sim.ns)
}

/// The image and env names of a Deployment's container.
fn template(d: &Deployment) -> (Option<String>, Vec<String>) {
    let c = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first());
    (
        c.and_then(|c| c.image.clone()),
        c.and_then(|c| c.env.as_ref())
            .map(|e| e.iter().map(|v| v.name.clone()).collect())
            .unwrap_or_default(),
    )
}

/// Sets `RELEASE=<value>` in the spec's env (a new pod template).
async fn release(sim: &Sim, value: &str, image: &str) -> Result<()> {
    let body = serde_json::json!({"spec": {"image": image, "env": [
        {"name": "ADMIN_TOKEN", "value": ADMIN_TOKEN},
        {"name": "RELEASE", "value": value},
    ]}});
    sim.msvcs()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// Starts the polling client and waits until it gets answers, so the count starts with a
/// working Service.
async fn client(sim: &Sim) -> Result<(Traffic, Instant)> {
    let traffic = Traffic::start(sim.vip(NAME).await?, "/users", Duration::from_millis(50));
    sim.poll("the client to get answers", || async {
        Ok(traffic.last_ok(10).then_some(()))
    })
    .await?;
    Ok((traffic, Instant::now()))
}

/// Failed requests of the client since `from`, and the total.
fn failures(t: &Traffic, from: Instant) -> (usize, usize) {
    let o: Vec<_> = t
        .outcomes()
        .into_iter()
        .filter(|(at, _)| *at >= from)
        .collect();
    (o.iter().filter(|(_, ok)| !ok).count(), o.len())
}

fn canary_pods(pods: Vec<Pod>) -> Vec<Pod> {
    pods.into_iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::TRACK))
                .is_some()
        })
        .collect()
}

/// The stable Deployment still runs the first template and the canary is gone; `Ready` stays
/// True while `Degraded` says `RolloutFailed`.
async fn assert_rolled_back(sim: &Sim, reasons: &[&str]) -> Result<RolloutStatus> {
    let r = sim
        .wait("the rollback", || async {
            Ok(rollout(sim)
                .await?
                .filter(|r| r.phase == RolloutPhase::RolledBack))
        })
        .await?;
    let reason = r.reason.clone().unwrap_or_default();
    if !reasons.contains(&reason.as_str()) {
        sim.print_report().await;
        bail!("rolled back for {reason}, expected one of {reasons:?}: {r:?}");
    }
    if r.evidence.is_empty() || r.failed_revision.is_none() {
        bail!("a rollback records the failed revision and evidence: {r:?}");
    }
    let stable = deployments(sim).get(NAME).await?;
    let (image, env) = template(&stable);
    if image.as_deref() != Some("flotilla/users:0.1.0") || env.iter().any(|e| e == "RELEASE") {
        bail!("the stable Deployment left the last good template: {image:?} {env:?}");
    }
    sim.wait("the canary Deployment to be deleted", || async {
        Ok(deployments(sim)
            .get_opt(CANARY)
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let ms: MicroService = sim.msvcs().get(NAME).await?;
    let cond = |t: &str| {
        ms.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    if cond(conditions::READY).map(|c| c.0) != Some(conditions::TRUE.into()) {
        bail!("Ready must stay True after a rollback: {:?}", ms.status);
    }
    if cond(conditions::DEGRADED) != Some((conditions::TRUE.into(), "RolloutFailed".into())) {
        bail!("Degraded must say RolloutFailed: {:?}", ms.status);
    }
    let events = sim.event_reasons(NAME).await?;
    if !events.iter().any(|e| e == "RolledBack") {
        bail!("no RolledBack Event: {events:?}");
    }
    // One Warning says it: no second one for `Degraded` turning true with the same message.
    if events.iter().any(|e| e == "RolloutFailed") {
        bail!("a RolloutFailed Event besides RolledBack: {events:?}");
    }
    Ok(r)
}

#[tokio::test]
async fn healthy_release_is_promoted() -> Result<()> {
    // The canary runs the new template beside the stable pods for the analysis, then every pod
    // moves to it and the canary goes; the polling client sees no failure. The operator restarts
    // mid-analysis and resumes it from status, with the clock where it was.
    let sim = Sim::start("rollout-ok").await?;
    guarded(&sim, 8).await?;
    let (traffic, from) = client(&sim).await?;
    release(&sim, "2", "flotilla/users:0.1.0").await?;
    let started = sim
        .wait("the analysis with the stable template kept", || async {
            let r = rollout(&sim).await?;
            let stable = template(&deployments(&sim).get(NAME).await?).1;
            let canary = deployments(&sim).get_opt(CANARY).await?;
            let analysing = r.filter(|r| r.phase == RolloutPhase::Analyzing);
            if analysing.is_some() && stable.iter().any(|e| e == "RELEASE") {
                bail!("the stable Deployment took the new template before the analysis ended");
            }
            Ok(analysing
                .filter(|_| canary.is_some())
                .and_then(|r| r.analysis_start_time))
        })
        .await?;
    sim.stop_operator().await?;
    sim.start_operator().await?;
    sim.wait("the promotion", || async {
        let r = rollout(&sim).await?;
        if let Some(r) = r.as_ref().filter(|r| r.phase == RolloutPhase::Analyzing) {
            if r.analysis_start_time.as_ref() != Some(&started) {
                bail!("the restarted operator restarted the analysis: {r:?}");
            }
        }
        Ok(r.filter(|r| r.phase == RolloutPhase::Promoted))
    })
    .await?;
    let events = sim.event_reasons(NAME).await?;
    let starts = events.iter().filter(|e| *e == "RolloutStarted").count();
    if starts != 1 {
        bail!("one analysis, one RolloutStarted Event: {events:?}");
    }
    sim.wait("every pod on the new template, no canary", || async {
        let (_, env) = template(&deployments(&sim).get(NAME).await?);
        let canary = deployments(&sim).get_opt(CANARY).await?;
        Ok((env.iter().any(|e| e == "RELEASE") && canary.is_none()).then_some(()))
    })
    .await?;
    let (failed, total) = failures(&traffic, from);
    eprintln!("healthy release: {failed} of {total} requests failed");
    if total == 0 || failed > 0 {
        bail!("{failed} of {total} client requests failed during a healthy release");
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unpullable_image_is_rolled_back() -> Result<()> {
    // A release whose image cannot be pulled never takes traffic and is rolled back at once.
    let sim = Sim::start("rollout-pull").await?;
    guarded(&sim, 3).await?;
    let (traffic, from) = client(&sim).await?;
    release(&sim, "2", "flotilla/missing:2").await?;
    let r = assert_rolled_back(&sim, &["CanaryNotReady"]).await?;
    if !r
        .evidence
        .iter()
        .any(|e| e.observation.contains("ImagePull") || e.observation.contains("ErrImage"))
    {
        bail!("the evidence names the pull error: {r:?}");
    }
    let (failed, total) = failures(&traffic, from);
    eprintln!("unpullable release: {failed} of {total} requests failed");
    if total == 0 || failed > 0 {
        bail!("{failed} of {total} client requests failed");
    }
    // The failed template is not tried again by another reconcile (a change elsewhere in the
    // spec): no new analysis, no canary.
    sim.msvcs()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"rollout": {"analysisSeconds": 4}}})),
        )
        .await?;
    let generation = sim.msvcs().get(NAME).await?.metadata.generation;
    sim.wait("the spec change observed", || async {
        let ms = sim.msvcs().get(NAME).await?;
        let observed = ms.status.and_then(|s| s.observed_generation);
        Ok((observed == generation).then_some(()))
    })
    .await?;
    let starts = |events: &[String]| events.iter().filter(|e| *e == "RolloutStarted").count();
    let events = sim.event_reasons(NAME).await?;
    if starts(&events) != 1 || deployments(&sim).get_opt(CANARY).await?.is_some() {
        bail!("the failed template was tried again without being asked: {events:?}");
    }
    // The retry annotation asks for one more analysis, which fails the same way.
    let retry =
        serde_json::json!({"metadata": {"annotations": {"flotilla.rs/rollout-retry": "1"}}});
    sim.msvcs()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&retry))
        .await?;
    sim.wait("a second analysis and rollback", || async {
        let events = sim.event_reasons(NAME).await?;
        let rolled_back = events.iter().filter(|e| *e == "RolledBack").count();
        Ok((starts(&events) == 2 && rolled_back == 2).then_some(()))
    })
    .await?;
    assert_rolled_back(&sim, &["CanaryNotReady"]).await?;
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn release_failing_readiness_is_rolled_back() -> Result<()> {
    // A release whose pods turn unready under analysis is rolled back; the client's failures are
    // bounded by the canary's share while it fails.
    let sim = Sim::start("rollout-ready").await?;
    guarded(&sim, 60).await?;
    let (traffic, from) = client(&sim).await?;
    release(&sim, "bad", "flotilla/users:0.1.0").await?;
    let canary = sim
        .wait("a ready canary pod", || async {
            let pods = canary_pods(sim.pods_of(NAME).await?);
            Ok(pods.into_iter().find(is_ready))
        })
        .await?;
    sim.poll("the readiness fault on the canary", || async {
        Ok(set_fault(&canary, r#"{"unhealthy": true}"#).await.ok())
    })
    .await?;
    assert_rolled_back(&sim, &["CanaryProbeFailed", "CanaryNotReady"]).await?;
    let (failed, total) = failures(&traffic, from);
    eprintln!("release failing readiness: {failed} of {total} requests failed");
    if total == 0 || failed * 10 > total {
        bail!("{failed} of {total} client requests failed");
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn release_answering_500_is_rolled_back() -> Result<()> {
    // With failover on, a canary answering 500 on half of its requests shows a 5xx ratio far
    // above the stable pods' and is rolled back; the client's failures stay below the canary's
    // share of the traffic times the fault rate.
    answering_500_is_rolled_back("rollout-500", true).await
}

#[tokio::test]
async fn release_answering_500_is_rolled_back_without_failover() -> Result<()> {
    // Failover off and metrics scraping left at its default: the analysis alone has Flotilla
    // probe the pods and scrape their metrics, and the canary is rolled back all the same.
    answering_500_is_rolled_back("rollout-500-nofo", false).await
}

async fn answering_500_is_rolled_back(ns: &str, failover: bool) -> Result<()> {
    let sim = Sim::start(ns).await?;
    if failover {
        sim.create_users("users-backup", 1, |_| {}).await?;
    }
    guarded_with(&sim, 60, |s| {
        s.rollout.max_error_rate = 0.1;
        if failover {
            s.failover.enabled = true;
            s.failover.fallback = Some("users-backup".into());
            s.failover.error_rate_window_seconds = 5;
        }
    })
    .await?;
    let (traffic, from) = client(&sim).await?;
    release(&sim, "500", "flotilla/users:0.1.0").await?;
    let canary = sim
        .wait("a ready canary pod", || async {
            let pods = canary_pods(sim.pods_of(NAME).await?);
            Ok(pods.into_iter().find(is_ready))
        })
        .await?;
    if !failover {
        // The analysis' report carries the pods' verdicts, and nothing that speaks of traffic
        // moving: no active target (the `ACTIVE` column stays empty), no panic.
        let report = sim
            .wait("the analysis' report in status.failover", || async {
                let s = sim.msvcs().get(NAME).await?.status.unwrap_or_default();
                Ok(s.failover.filter(|f| !f.pods.is_empty()))
            })
            .await?;
        if report.active.is_some() || report.panic.is_some() || report.observe_only != Some(true) {
            bail!("the analysis' report speaks of failover: {report:?}");
        }
    }
    sim.wait("the error fault on the canary", || async {
        Ok(set_fault(&canary, r#"{"errorRate": 0.5}"#).await.ok())
    })
    .await?;
    let r = assert_rolled_back(&sim, &["CanaryErrorRate"]).await?;
    eprintln!("evidence: {:?}", r.evidence);
    let (failed, total) = failures(&traffic, from);
    eprintln!("release answering 500: {failed} of {total} requests failed");
    if total == 0 || failed * 6 > total {
        bail!("{failed} of {total} client requests failed");
    }
    let ms = sim.msvcs().get(NAME).await?;
    let status = ms.status.unwrap_or_default();
    if !failover {
        // Probing for the analysis writes no failover conditions, and its report is withdrawn
        // once the analysis is over.
        if status
            .conditions
            .iter()
            .any(|c| c.type_ == conditions::FAILED_OVER)
        {
            bail!("a service without failover got a FailedOver condition");
        }
        sim.wait(
            "status.failover to be withdrawn after the analysis",
            || async {
                let s = sim.msvcs().get(NAME).await?.status.unwrap_or_default();
                // Withdrawn fields leave at most an empty `failover` object behind.
                let empty = s.failover.is_none_or(|f| f == FailoverStatus::default());
                Ok(empty.then_some(()))
            },
        )
        .await?;
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn crash_looping_release_is_rolled_back() -> Result<()> {
    // A release whose process exits at start (here: users refuses a placeholder admin token) never
    // becomes ready; the canary's restarts or its CrashLoopBackOff roll it back, the stable pods
    // serve throughout.
    let sim = Sim::start("rollout-crash").await?;
    guarded(&sim, 60).await?;
    let (traffic, from) = client(&sim).await?;
    let body = serde_json::json!({"spec": {"env": [
        {"name": "ADMIN_TOKEN", "value": "changeme"},
        {"name": "RELEASE", "value": "crash"},
    ]}});
    sim.msvcs()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    let r = assert_rolled_back(&sim, &["CanaryNotReady", "CanaryRestarted"]).await?;
    if !r
        .evidence
        .iter()
        .any(|e| e.observation.contains("CrashLoopBackOff") || e.observation.contains("restart"))
    {
        bail!("the evidence names the crash loop: {r:?}");
    }
    let (failed, total) = failures(&traffic, from);
    eprintln!("crash-looping release: {failed} of {total} requests failed");
    if total == 0 || failed > 0 {
        bail!("{failed} of {total} client requests failed");
    }
    sim.shutdown().await;
    Ok(())
}
