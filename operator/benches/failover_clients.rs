//! Failover as different clients see it, on kubesim: a `users` primary (2 pods, failover to a
//! 2-pod `users-backup`), traffic to the primary Service's cluster IP every 10 ms, then every
//! primary pod made unready and answering 500 to API calls.
//!
//! Client kinds: `new-connection` (HTTP/1.1, a fresh connection per request) and `pooled` (one
//! reqwest client keeping HTTP/1.1 connections alive, as connection pools do). For each kind and
//! run it prints the client error window (first to last failed request after the fault) and the
//! requests that still failed after the endpoints switched, i.e. still reached an ejected pod.
//!
//! `cargo build -p users -p flotilla-operator` first, then
//! `cargo bench -p flotilla-operator --bench failover_clients -- --runs 10`.
//! Not covered yet: an HTTP/2 client and a gRPC client against `orders`.

// Shared with the failover tests; this bench uses only part of it.
#[allow(dead_code)]
#[path = "../tests/failover_common/sim.rs"]
mod sim;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use sim::*;
use tokio::task::JoinHandle;

/// Longest wait for a switch or a recovery.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
struct Args {
    /// Runs per client kind.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

type Log = Arc<Mutex<Vec<(Instant, bool)>>>;

/// A client sending `GET /users` every 10 ms and logging each outcome (a 5xx or an error fails).
struct Client {
    log: Log,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    fn pooled(vip: SocketAddr) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        let url = format!("http://{vip}/users");
        let log = Log::default();
        let sink = log.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let ok = match http.get(&url).send().await {
                    Ok(r) => r.status().as_u16() < 500 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if let Ok(mut l) = sink.lock() {
                    l.push((Instant::now(), ok));
                }
            }
        });
        Ok(Client { log, task })
    }

    fn outcomes(&self) -> Vec<(Instant, bool)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn last_ok(&self, n: usize) -> bool {
        let o = self.outcomes();
        o.len() >= n && o[o.len() - n..].iter().all(|(_, ok)| *ok)
    }
}

enum Kind {
    NewConnection(Traffic),
    Pooled(Client),
}

impl Kind {
    fn outcomes(&self) -> Vec<(Instant, bool)> {
        match self {
            Kind::NewConnection(t) => t.outcomes(),
            Kind::Pooled(c) => c.outcomes(),
        }
    }
    fn last_ok(&self, n: usize) -> bool {
        match self {
            Kind::NewConnection(t) => t.last_ok(n),
            Kind::Pooled(c) => c.last_ok(n),
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(&args))
}

async fn bench(args: &Args) -> Result<()> {
    let sim = Sim::start("failover-clients").await?;
    sim.create_users("users-backup", 2, |_| {}).await?;
    sim.create_users("users", 2, |s| {
        s.failover.enabled = true;
        s.failover.fallback = Some("users-backup".into());
        s.failover.recover_after_seconds = 2;
        s.failover.max_flaps = 1000;
    })
    .await?;
    let fallback = sim.ready_pods("users-backup", 2).await?;
    let fallback_ips: std::collections::BTreeSet<String> = fallback.iter().map(pod_ip).collect();
    let vip = sim.vip("users").await?;
    for name in ["new-connection", "pooled"] {
        let client = if name == "pooled" {
            Kind::Pooled(Client::pooled(vip)?)
        } else {
            Kind::NewConnection(Traffic::start(vip, "/users", Duration::from_millis(10)))
        };
        let (mut window, mut late, mut late_after) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..args.runs {
            let primary = sim.ready_pods("users", 2).await?;
            let primary_ips: std::collections::BTreeSet<String> =
                primary.iter().map(pod_ip).collect();
            sim.wait("primary active and serving", || async {
                let ok = sim.active("users").await?.as_deref() == Some("primary")
                    && sim.ready_endpoints("users").await? == primary_ips
                    && client.last_ok(30);
                Ok(ok.then_some(()))
            })
            .await?;
            let t_fault = Instant::now();
            for p in &primary {
                set_fault(p, r#"{"unhealthy": true, "errorRate": 1.0}"#).await?;
            }
            let t_switch = loop {
                if sim.ready_endpoints("users").await? == fallback_ips {
                    break Instant::now();
                }
                if t_fault.elapsed() > WAIT {
                    sim.print_report().await;
                    bail!("{name} run {run}: no switch");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            sim.wait("clients succeed again", || async {
                Ok(client.last_ok(30).then_some(()))
            })
            .await?;
            let errors: Vec<Instant> = client
                .outcomes()
                .into_iter()
                .filter(|(t, ok)| *t >= t_fault && !ok)
                .map(|(t, _)| t)
                .collect();
            let w = match (errors.first(), errors.last()) {
                (Some(a), Some(b)) => (*b - *a).as_secs_f64(),
                _ => 0.0,
            };
            // Only the faulty primary answers 500, so a failure after the switch reached it.
            let after: Vec<Instant> = errors.iter().copied().filter(|t| *t > t_switch).collect();
            let last_after = after.last().map_or(0.0, |t| (*t - t_switch).as_secs_f64());
            println!(
                "{name} run {run}: fault→switch {:.3}s, client error window {w:.3}s ({} failed), \
                 {} failed after the switch (last {last_after:.3}s after it)",
                (t_switch - t_fault).as_secs_f64(),
                errors.len(),
                after.len(),
            );
            window.push(w);
            late.push(after.len() as f64);
            late_after.push(last_after);
            for p in &primary {
                clear_fault(p).await?;
            }
        }
        println!(
            "{name}: runs {}, client error window p50 {:.3}s p99 {:.3}s; requests failing after \
             the switch p50 {:.0} max {:.0}; last of them after the switch p99 {:.3}s",
            args.runs,
            pct(&mut window, 50.0),
            pct(&mut window, 99.0),
            pct(&mut late, 50.0),
            pct(&mut late, 100.0),
            pct(&mut late_after, 99.0),
        );
    }
    sim.shutdown().await;
    Ok(())
}
