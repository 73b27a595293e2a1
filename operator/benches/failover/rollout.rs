//! (g) Guarded rollouts under traffic: a release whose canary pod fails once it takes traffic.
//! Per run, the time from the canary's first failed client request (when it was sent) to the
//! canary being out of the Service's endpoints, and the client requests that failed during the
//! bad release: inside that window, after the failure that opens it, next to the canary's share
//! of the pods times the requests sent there (what a canary holding its share of traffic for
//! that long costs), and those sent after it left the endpoints.
//!
//! Two arms, defaults as shipped otherwise:
//! - failover on (as the benchmark's other parts): the canary fails readiness and answers 5xx;
//!   the prober judges the canary pods twice a second and ejects a failing one at once, and the
//!   rollback then deletes it;
//! - failover off: the canary answers 5xx while its readiness stays fine, so neither the kubelet
//!   nor an ejection removes it: only the analysis (the prober observing for it, the canary's
//!   5xx ratio against the stable pods') and the rollback that deletes it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_crds::{labels, RolloutPhase, RolloutStrategy};
use kube::api::{Patch, PatchParams};

use crate::pct;
use crate::sim::*;

const NAME: &str = "users";
/// Stable pods; the canary adds one, so it holds a third of the pods.
const STABLE: usize = 2;

/// Runs `runs` bad releases with failover on, then `runs` with it off, and prints the figures.
pub async fn measure(runs: usize) -> Result<()> {
    for failover in [true, false] {
        let (ns, arm) = if failover {
            ("rollout-bench", "failover on")
        } else {
            ("rollout-bench-nofo", "failover off")
        };
        let sim = Sim::start(ns).await?;
        let r = bad_releases(&sim, runs, failover).await;
        if r.is_err() {
            sim.print_report().await;
        }
        sim.shutdown().await;
        let (mut out, f) = r?;
        println!(
            "(g) {arm}: canary first failed request → out of traffic p50 {:.3}s p99 {:.3}s \
             ({runs} runs)",
            pct(&mut out, 50.0),
            pct(&mut out, 99.0)
        );
        println!(
            "(g) {arm}: failed client requests during the bad releases: {} — {runs} opening the \
             windows, {} more inside them (canary share × requests sent there: {:.1}), {} sent \
             after the canary left the endpoints",
            f.failed, f.in_window, f.bound, f.late
        );
    }
    Ok(())
}

async fn rollout_phase(sim: &Sim) -> Result<Option<RolloutPhase>> {
    Ok(sim
        .msvcs()
        .get(NAME)
        .await?
        .status
        .and_then(|s| s.rollout)
        .map(|r| r.phase))
}

async fn bad_releases(sim: &Sim, runs: usize, failover: bool) -> Result<(Vec<f64>, Failures)> {
    if failover {
        sim.create_users("users-backup", 1, |_| {}).await?;
    }
    sim.create_users(NAME, i32::try_from(STABLE)?, |s| {
        s.rollout.strategy = RolloutStrategy::Guarded;
        s.rollout.analysis_seconds = 600;
        s.rollout.ready_timeout_seconds = 60;
        if failover {
            s.failover.enabled = true;
            s.failover.fallback = Some("users-backup".into());
        }
    })
    .await?;
    let fault = if failover {
        r#"{"unhealthy": true, "errorRate": 1.0}"#
    } else {
        r#"{"errorRate": 1.0}"#
    };
    sim.ready_pods(NAME, STABLE).await?;
    sim.wait("the first template to be stable", || async {
        Ok((rollout_phase(sim).await? == Some(RolloutPhase::Stable)).then_some(()))
    })
    .await?;
    let traffic = Traffic::start(sim.vip(NAME).await?, "/users", Duration::from_millis(10));
    let share = 1.0 / (STABLE as f64 + 1.0);
    let (mut out, mut totals) = (Vec::new(), Failures::default());
    for run in 0..runs {
        let body = serde_json::json!({"spec": {"env": [
            {"name": "ADMIN_TOKEN", "value": ADMIN_TOKEN},
            {"name": "RELEASE", "value": format!("bad-{run}")},
        ]}});
        sim.msvcs()
            .patch(NAME, &PatchParams::default(), &Patch::Merge(&body))
            .await?;
        // The canary pod takes traffic: Ready and among the Service's endpoints.
        let canary = sim
            .poll("a canary pod in the Service's endpoints", || async {
                let endpoints = sim.ready_endpoints(NAME).await?;
                let pods = sim.pods_of(NAME).await?;
                Ok(pods.into_iter().find(|p| {
                    is_ready(p)
                        && p.metadata
                            .labels
                            .as_ref()
                            .is_some_and(|l| l.contains_key(labels::TRACK))
                        && endpoints.contains(&pod_ip(p))
                }))
            })
            .await?;
        let ip = pod_ip(&canary);
        sim.poll("clients succeed with the canary in traffic", || async {
            Ok(traffic.last_ok(20).then_some(()))
        })
        .await?;
        let t_fault = Instant::now();
        set_fault(&canary, fault).await?;
        let t_out = loop {
            if !sim.ready_endpoints(NAME).await?.contains(&ip) {
                break Instant::now();
            }
            if t_fault.elapsed() > WAIT {
                bail!("run {run}: the failing canary stayed in traffic");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        sim.wait("the rollback", || async {
            Ok((rollout_phase(sim).await? == Some(RolloutPhase::RolledBack)).then_some(()))
        })
        .await?;
        // Requests still in flight at t_out may fail; count until clients succeed again.
        sim.poll("clients succeed again", || async {
            Ok(traffic.last_ok(20).then_some(()))
        })
        .await?;
        let Tally {
            first_fail,
            failed,
            after_first,
            failed_after_first,
            late,
        } = tally(traffic.outcomes_at(|sent, _| sent), t_fault, t_out)?;
        let w = t_out.saturating_duration_since(first_fail).as_secs_f64();
        println!(
            "rollout run {run}: first failed request {:.3}s after the fault, out of traffic {w:.3}s \
             later; {failed} failed requests: the first, {failed_after_first} of the \
             {after_first} sent after it in that window, {late} sent later",
            (first_fail - t_fault).as_secs_f64(),
        );
        out.push(w);
        totals.failed += failed;
        totals.in_window += failed_after_first;
        totals.late += late;
        totals.bound += share * after_first as f64;
    }
    Ok((out, totals))
}

/// One bad release's client requests, by send time: a request sent to the canary just before
/// it left the endpoints, and failing just after, was sent in the window.
struct Tally {
    /// When the first failed request was sent: the window opens there.
    first_fail: Instant,
    /// Every failed request.
    failed: usize,
    /// Requests sent in the window after that first one.
    after_first: usize,
    /// Those of them that failed. The window opens with a failure, so that one is certain: the
    /// canary's share applies to the requests after it.
    failed_after_first: usize,
    /// Failed requests sent after the canary left the EndpointSlice (the proxy had not caught
    /// up).
    late: usize,
}

/// Tallies the outcomes (by send time) from `t_fault` on, the window closing at `t_out`.
fn tally(outcomes: Vec<(Instant, bool)>, t_fault: Instant, t_out: Instant) -> Result<Tally> {
    let seen: Vec<(Instant, bool)> = outcomes
        .into_iter()
        .filter(|(t, _)| *t >= t_fault)
        .collect();
    let first_fail = seen
        .iter()
        .find(|(_, ok)| !ok)
        .map(|(t, _)| *t)
        .context("the canary never failed a client request")?;
    let window: Vec<bool> = seen
        .iter()
        .filter(|(t, _)| *t >= first_fail && *t <= t_out)
        .map(|(_, ok)| *ok)
        .collect();
    Ok(Tally {
        first_fail,
        failed: seen.iter().filter(|(_, ok)| !ok).count(),
        after_first: window.len().saturating_sub(1),
        failed_after_first: window.iter().filter(|ok| !**ok).count().saturating_sub(1),
        late: seen.iter().filter(|(t, ok)| !ok && *t > t_out).count(),
    })
}

/// Client failures over the bad releases of one arm.
#[derive(Debug, Default)]
struct Failures {
    /// Every failed request.
    failed: usize,
    /// Failed requests inside the windows, after each window's first.
    in_window: usize,
    /// The canary's share of the requests sent inside the windows after each window's first.
    bound: f64,
    /// Failed requests sent after the canary left the endpoints.
    late: usize,
}
