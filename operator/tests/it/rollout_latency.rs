//! Guarded rollouts judged on latency, on a local cluster: kubesim runs real `users` processes
//! as pods and a client sends steady traffic through the Service. A release as fast as the last
//! one is promoted after its canary's latency was compared with the stable pods'; a release
//! that answers correctly but slowly is rolled back for its latency alone.

use std::time::Duration;

use anyhow::{bail, Result};
use flotilla_crds::{
    labels, MicroService, RolloutPhase, RolloutStatus, RolloutStrategy, TrafficStatus,
};
use kube::api::{Patch, PatchParams};

use crate::failover_common::sim::*;

const NAME: &str = "users";

async fn current(sim: &Sim) -> Result<MicroService> {
    Ok(sim.msvcs().get(NAME).await?)
}

fn rollout(ms: &MicroService) -> Option<RolloutStatus> {
    ms.status.as_ref().and_then(|s| s.rollout.clone())
}

/// Both p99 latencies an analysis compares, when the figures have them.
fn compared(t: Option<&TrafficStatus>) -> Option<(f64, f64)> {
    let t = t?;
    Some((
        t.canary.as_ref()?.p99_latency_millis?,
        t.stable.as_ref()?.p99_latency_millis?,
    ))
}

/// A new pod template: `RELEASE=<value>` in the env.
async fn release(sim: &Sim, value: &str) -> Result<()> {
    let body = serde_json::json!({"spec": {"env": [
        {"name": "ADMIN_TOKEN", "value": ADMIN_TOKEN},
        {"name": "JWT_PUBLIC_KEYS", "value": PUBLIC_KEYS},
        {"name": "RELEASE", "value": value},
    ]}});
    sim.msvcs()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_slow_canary_is_rolled_back_and_a_fast_one_promoted() -> Result<()> {
    // Failover off and every rollout setting at its default but the analysis' length: the
    // guarded rollout alone has the pods scraped, and `failOn` includes `Latency`.
    let sim = Sim::start("rollout-latency").await?;
    sim.create_users(NAME, 2, |s| {
        s.rollout.strategy = RolloutStrategy::Guarded;
        s.rollout.analysis_seconds = 40;
        s.rollout.ready_timeout_seconds = 30;
    })
    .await?;
    sim.ready_pods(NAME, 2).await?;
    // Four clients of up to 20 requests a second each: each waits for its answers, so a slow
    // canary slows them down, and the canary's share must still reach the 100 requests a p99
    // needs within the figures' 30 s window.
    let vip = sim.vip(NAME).await?;
    let clients: Vec<Traffic> = (0..4)
        .map(|_| Traffic::start(vip, "/users", Duration::from_millis(50)))
        .collect();
    sim.poll("the clients to get answers", || async {
        Ok(clients.iter().all(|c| c.last_ok(10)).then_some(()))
    })
    .await?;

    // A release as fast as the stable pods: the analysis compares the two latencies, and
    // promotes it.
    release(&sim, "2").await?;
    let seen = std::cell::Cell::new(None);
    sim.wait("the fast release's promotion", || async {
        let ms = current(&sim).await?;
        let status = ms.status.as_ref();
        eprintln!(
            "DEBUG {:?} {:?}",
            status.and_then(|s| s.traffic.as_ref()),
            rollout(&ms).map(|r| r.phase)
        );
        if let Some(p99s) = compared(status.and_then(|s| s.traffic.as_ref())) {
            seen.set(Some(p99s));
        }
        let r = rollout(&ms);
        if r.as_ref()
            .is_some_and(|r| r.phase == RolloutPhase::RolledBack)
        {
            bail!("the fast release was rolled back: {r:?}");
        }
        Ok(r.filter(|r| r.phase == RolloutPhase::Promoted))
    })
    .await?;
    let seen = seen.get();
    eprintln!("fast release: canary and stable p99 {seen:?} ms during the analysis");
    if seen.is_none() {
        bail!("the analysis never had both latencies to compare");
    }

    // A release that answers every request correctly, 300 ms late, on its canary pod.
    release(&sim, "3").await?;
    let canary = sim
        .wait("a ready canary pod", || async {
            let pods = sim.pods_of(NAME).await?;
            Ok(pods.into_iter().find(|p| {
                is_ready(p)
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(labels::TRACK))
                        .is_some()
            }))
        })
        .await?;
    sim.wait("the latency fault on the canary", || async {
        Ok(set_fault(&canary, r#"{"latencyMs": 300}"#).await.ok())
    })
    .await?;
    // The analysis of the slow release is under way (its canary is ready): a promotion now
    // would be the slow release's.
    let r = sim
        .wait("the slow release's rollback", || async {
            let r = rollout(&current(&sim).await?);
            if r.as_ref()
                .is_some_and(|r| r.phase == RolloutPhase::Promoted)
            {
                bail!("the slow release was promoted: {r:?}");
            }
            Ok(r.filter(|r| r.phase == RolloutPhase::RolledBack))
        })
        .await?;
    eprintln!("slow release: {:?} {:?}", r.reason, r.evidence);
    let observation = r.evidence.first().map(|e| e.observation.as_str());
    if r.reason.as_deref() != Some("CanaryLatency")
        || !observation.is_some_and(|o| o.starts_with("p99 latency "))
    {
        sim.print_report().await;
        bail!("rolled back, but not for its latency: {r:?}");
    }
    let events = sim.event_reasons(NAME).await?;
    if !events.iter().any(|e| e == "RolledBack") {
        bail!("no RolledBack Event: {events:?}");
    }
    // A slow canary answers every request; the few that may fail are those in flight to pods
    // that the promotion and the rollback replace.
    let outcomes: Vec<bool> = clients
        .iter()
        .flat_map(|c| c.outcomes().into_iter().map(|(_, ok)| ok))
        .collect();
    let failed = outcomes.iter().filter(|ok| !**ok).count();
    eprintln!("{failed} of {} client requests failed", outcomes.len());
    if failed * 100 > outcomes.len() {
        bail!("{failed} of {} client requests failed", outcomes.len());
    }
    sim.shutdown().await;
    Ok(())
}
