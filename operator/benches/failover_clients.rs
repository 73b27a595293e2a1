//! Failover as different clients see it, on kubesim: a primary (2 pods, failover to a 2-pod
//! backup), traffic to the primary Service's cluster IP every 10 ms, then every primary pod made
//! unready and answering every API call with an error.
//!
//! Client kinds, against `users`: `new-connection` (HTTP/1.1, a fresh connection per request),
//! `pooled` (one reqwest client keeping HTTP/1.1 connections alive, as connection pools do),
//! `http2` (reqwest with HTTP/2 prior knowledge: one multiplexed connection); against `orders`:
//! `grpc` (one tonic channel calling `ListOrders`). For each kind and run it prints the client
//! error window (first to last failed request after the fault) and the requests that still
//! failed after the endpoints switched, i.e. still reached an ejected pod (only the faulty
//! primary answers with errors).
//!
//! `cargo build -p users -p orders -p flotilla-operator` first, then
//! `cargo bench -p flotilla-operator --bench failover_clients -- --runs 10`
//! (`--kinds pooled,grpc` to run some kinds only).

// Shared with the failover tests; this bench uses only part of it.
#[allow(dead_code)]
#[path = "../tests/it/failover_common/clients.rs"]
mod clients;
#[path = "common/measure.rs"]
mod measure;
#[allow(dead_code)]
#[path = "../tests/it/failover_common/sim.rs"]
mod sim;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use clients::{api_requests_of, create_orders, Client, Kind};
use measure::{failures_since, random_phase};
use sim::*;

/// Longest wait for a switch or a recovery.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
struct Args {
    /// Runs per client kind.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Client kinds to run, comma-separated: new-connection, pooled, http2, grpc.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "new-connection,pooled,http2,grpc"
    )]
    kinds: Vec<String>,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One client under measurement.
enum Running {
    NewConnection(Traffic),
    Kept(Client),
}

impl Running {
    fn outcomes(&self) -> Vec<(Instant, bool)> {
        match self {
            Running::NewConnection(t) => t.outcomes(),
            Running::Kept(c) => c.outcomes(),
        }
    }
    fn last_ok(&self, n: usize) -> bool {
        match self {
            Running::NewConnection(t) => t.last_ok(n),
            Running::Kept(c) => c.last_ok(n),
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
    let grpc = args.kinds.iter().any(|k| k == "grpc");
    let http = args.kinds.iter().any(|k| k != "grpc");
    let tweak = |s: &mut flotilla_crds::MicroServiceSpec, fallback: &str| {
        s.failover.enabled = true;
        s.failover.fallback = Some(fallback.into());
        s.failover.recover_after_seconds = 2;
        s.failover.max_flaps = 1000;
    };
    if http {
        sim.create_users("users-backup", 2, |_| {}).await?;
        sim.create_users("users", 2, |s| tweak(s, "users-backup"))
            .await?;
    }
    if grpc {
        create_orders(&sim, "orders-backup", 2, &[], |_| {}).await?;
        create_orders(&sim, "orders", 2, &[], |s| tweak(s, "orders-backup")).await?;
    }
    for name in &args.kinds {
        let (primary, fallback) = if name == "grpc" {
            ("orders", "orders-backup")
        } else {
            ("users", "users-backup")
        };
        let vip = sim.vip(primary).await?;
        let every = Duration::from_millis(10);
        let client = match name.as_str() {
            "new-connection" => Running::NewConnection(Traffic::start(vip, "/users", every)),
            "pooled" => Running::Kept(Client::start(Kind::Pooled, vip, every).await?),
            "http2" => Running::Kept(Client::start(Kind::Http2, vip, every).await?),
            "grpc" => Running::Kept(Client::start(Kind::Grpc, vip, every).await?),
            other => bail!("unknown client kind {other}"),
        };
        let r = measure(&sim, args.runs, name, &client, primary, fallback).await;
        if r.is_err() {
            sim.print_report().await;
        }
        r?;
    }
    sim.shutdown().await;
    Ok(())
}

/// `runs` fault/recovery cycles with one client; prints each run and the percentiles.
async fn measure(
    sim: &Sim,
    runs: usize,
    name: &str,
    client: &Running,
    primary_svc: &str,
    fallback_svc: &str,
) -> Result<()> {
    let fallback = sim.ready_pods(fallback_svc, 2).await?;
    let fallback_ips: BTreeSet<String> = fallback.iter().map(pod_ip).collect();
    let (mut window, mut late, mut late_after) = (Vec::new(), Vec::new(), Vec::new());
    let mut served = Vec::new();
    for run in 0..runs {
        let primary = sim.ready_pods(primary_svc, 2).await?;
        let primary_ips: BTreeSet<String> = primary.iter().map(pod_ip).collect();
        // Polled, not watched: the client's outcomes change without any API event.
        sim.poll("primary active and serving", || async {
            let ok = sim.active(primary_svc).await?.as_deref() == Some("primary")
                && sim.ready_endpoints(primary_svc).await? == primary_ips
                && client.last_ok(30);
            Ok(ok.then_some(()))
        })
        .await?;
        // The client's requests reach the primary (not a fallback pod it kept a connection to).
        sim.poll("the client's traffic on the primary", || async {
            let before = api_requests_of(&primary, PORT).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok((api_requests_of(&primary, PORT).await? > before).then_some(()))
        })
        .await?;
        random_phase(Duration::from_millis(500)).await;
        let t_fault = Instant::now();
        for p in &primary {
            set_fault(p, r#"{"unhealthy": true, "errorRate": 1.0}"#).await?;
        }
        let (t_switch, at_switch) = loop {
            if sim.ready_endpoints(primary_svc).await? == fallback_ips {
                break (Instant::now(), api_requests_of(&primary, PORT).await?);
            }
            if t_fault.elapsed() > WAIT {
                bail!("{name} run {run}: no switch");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        sim.poll("clients succeed again", || async {
            Ok(client.last_ok(30).then_some(()))
        })
        .await?;
        // Counted by the primary's pods themselves: API requests they answered after the switch.
        let served_after = api_requests_of(&primary, PORT).await? - at_switch;
        let (errors, w) = failures_since(client.outcomes(), t_fault);
        // Only the faulty primary answers with errors, so a failure after the switch reached it.
        let after: Vec<Instant> = errors.iter().copied().filter(|t| *t > t_switch).collect();
        let last_after = after.last().map_or(0.0, |t| (*t - t_switch).as_secs_f64());
        println!(
            "{name} run {run}: fault→switch {:.3}s, client error window {w:.3}s ({} failed), \
             {} failed after the switch (last {last_after:.3}s after it), {served_after:.0} \
             answered by the ejected primary after the switch",
            (t_switch - t_fault).as_secs_f64(),
            errors.len(),
            after.len(),
        );
        served.push(served_after);
        window.push(w);
        late.push(after.len() as f64);
        late_after.push(last_after);
        for p in &primary {
            clear_fault(p).await?;
        }
    }
    println!(
        "{name}: runs {runs}, client error window p50 {:.3}s p99 {:.3}s; requests reaching an \
         ejected pod after the switch p50 {:.0} p99 {:.0} max {:.0}; last of them after the \
         switch p99 {:.3}s; answered by the ejected primary after the switch p50 {:.0} max {:.0}",
        pct(&mut window, 50.0),
        pct(&mut window, 99.0),
        pct(&mut late, 50.0),
        pct(&mut late, 99.0),
        pct(&mut late, 100.0),
        pct(&mut late_after, 99.0),
        pct(&mut served, 50.0),
        pct(&mut served, 100.0),
    );
    Ok(())
}
