//! (f) Flotilla against readiness alone, in one run: one of a service's two pods starts failing
//! (readiness 503 and every request 5xx), and the client error window is measured three ways —
//! with Flotilla's failover ejecting the pod, and with failover off so only the kubelet's
//! readiness probe takes it out of the Service: once with the probe settings Flotilla generates
//! from `spec.health`, once with Kubernetes' default probe settings (period 10 s, timeout 1 s,
//! failureThreshold 3, successThreshold 1).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::measure::{failures_since, random_phase};
use crate::pct;
use crate::sim::*;

#[derive(Clone, Copy)]
enum Setup {
    Flotilla,
    ReadinessGenerated,
    ReadinessKubeDefaults,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Flotilla => "Flotilla failover (eject)",
            Setup::ReadinessGenerated => "readiness only, Flotilla's generated probe",
            Setup::ReadinessKubeDefaults => "readiness only, Kubernetes' default probe",
        }
    }
}

/// Runs every setup `runs` times and prints the error windows and their ratio to Flotilla's.
pub async fn compare(runs: usize) -> Result<()> {
    let sim = Sim::start("readiness-bench").await?;
    let setups = [
        ("eject", Setup::Flotilla),
        ("ready-gen", Setup::ReadinessGenerated),
        ("ready-k8s", Setup::ReadinessKubeDefaults),
    ];
    let mut rows = Vec::new();
    for (name, setup) in setups {
        let r = one_pod_fault(&sim, name, setup, runs).await;
        let mut w = match r {
            Ok(w) => w,
            Err(e) => {
                sim.print_report().await;
                sim.shutdown().await;
                return Err(e);
            }
        };
        rows.push((setup, pct(&mut w, 50.0), pct(&mut w, 99.0)));
    }
    sim.shutdown().await;
    let base = rows.first().map_or(f64::NAN, |r| r.1);
    for (setup, p50, p99) in rows {
        println!(
            "(f) one pod fails, {:<44} client errors p50 {p50:.3}s p99 {p99:.3}s ({:.1}× Flotilla's p50)",
            setup.name(),
            p50 / base
        );
    }
    Ok(())
}

async fn one_pod_fault(sim: &Sim, name: &str, setup: Setup, runs: usize) -> Result<Vec<f64>> {
    // Failover needs a declared fallback; with one of two pods failing the primary keeps a
    // healthy pod, so traffic never moves there and only the ejection is measured.
    let fallback = format!("{name}-backup");
    if matches!(setup, Setup::Flotilla) {
        sim.create_users(&fallback, 1, |_| {}).await?;
    }
    sim.create_users(name, 2, |s| match setup {
        Setup::Flotilla => {
            s.failover.enabled = true;
            s.failover.fallback = Some(fallback.clone());
            s.failover.max_flaps = 1000;
        }
        Setup::ReadinessGenerated => s.failover.enabled = false,
        Setup::ReadinessKubeDefaults => {
            s.failover.enabled = false;
            s.health.period_millis = 10_000;
            s.health.timeout_millis = 1_000;
            s.health.failure_threshold = 3;
            s.health.success_threshold = 1;
        }
    })
    .await?;
    // The probe period that notices the fault: Flotilla's and the generated readiness probe's
    // default, or Kubernetes' default.
    let period = match setup {
        Setup::ReadinessKubeDefaults => Duration::from_secs(10),
        Setup::Flotilla | Setup::ReadinessGenerated => Duration::from_millis(500),
    };
    let pods = sim.ready_pods(name, 2).await?;
    let all: BTreeSet<String> = pods.iter().map(pod_ip).collect();
    let survivor: BTreeSet<String> = pods[1..].iter().map(pod_ip).collect();
    let vip = sim.vip(name).await?;
    let traffic = Traffic::start(vip, "/users", Duration::from_millis(10));
    let mut windows = Vec::new();
    for run in 0..runs {
        sim.poll("both pods serving", || async {
            let ok = sim.ready_endpoints(name).await? == all && traffic.last_ok(30);
            Ok(ok.then_some(()))
        })
        .await?;
        random_phase(period).await;
        let t_fault = Instant::now();
        set_fault(&pods[0], r#"{"unhealthy": true, "errorRate": 1.0}"#).await?;
        let wait = Duration::from_secs(120);
        while sim.ready_endpoints(name).await? != survivor {
            if t_fault.elapsed() > wait {
                bail!("{name} run {run}: the failing pod never left the Service");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sim.poll("clients succeed again", || async {
            Ok(traffic.last_ok(30).then_some(()))
        })
        .await?;
        let (errors, w) = failures_since(traffic.outcomes(), t_fault);
        println!(
            "(f) {} run {run}: client error window {w:.3}s ({} failed requests)",
            setup.name(),
            errors.len()
        );
        windows.push(w);
        clear_fault(&pods[0]).await?;
    }
    drop(traffic);
    sim.msvcs()
        .delete(name, &kube::api::DeleteParams::default())
        .await?;
    Ok(windows)
}
