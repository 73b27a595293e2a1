//! Failover benchmark. Prints percentiles of:
//! (a) detection: first failed probe of the decisive run → traffic change written (the
//!     operator's `flotilla_failover_detection_seconds`, per run from its sum and count);
//! (b) fault → switch: faults injected → the primary Service's EndpointSlice lists exactly the
//!     fallback's pods;
//! (c) client error window: first to last failed request of a client sending steady traffic to
//!     the primary Service's cluster IP;
//! (d) prober CPU per 1,000 pods at the default period, measured from /proc/self/stat while the
//!     engine probes pods served by a separate process; with `--scrape`, every pod's metrics
//!     (a kit service's exposition, counters growing) are also scraped once a second, as with
//!     `failover.scrapeMetrics`; with `--scrape-only`, the pods are only scraped for their
//!     request figures, as for a service with `health.reportTraffic` and no failover;
//! (e) per failover run, where the time went: fault → first failing probe → decision →
//!     membership writes acknowledged (from the operator's
//!     `flotilla_failover_last_failover_timestamp_seconds`) → the Service's endpoints changed →
//!     first client success after the last failure;
//! (f) readiness alone, side by side: one of two pods fails, with Flotilla's failover, then with
//!     failover off so only the kubelet's readiness probe moves traffic (with the probe settings
//!     Flotilla generates, and with Kubernetes' default settings: period 10 s, failureThreshold
//!     3); prints each client error window and its ratio to Flotilla's;
//! (g) guarded rollouts: a canary that fails under traffic, from its first failed client request
//!     to its being out of the Service's endpoints, and the failed requests of those releases;
//!     with failover on, and with failover off (the analysis alone).
//!
//! Run: `cargo bench -p flotilla-operator --bench failover -- --runs 20`
//! (`cargo build -p users` first; or set `FLOTILLA_USERS_BIN`).

#[path = "common/measure.rs"]
mod measure;
#[allow(dead_code)]
#[path = "../tests/it/failover_common/pods.rs"]
mod pods;
#[allow(dead_code)]
#[path = "../tests/it/failover_common/sim.rs"]
mod sim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use flotilla_crds::labels;
use flotilla_operator::failover::engine::{self, EngineConfig, VerdictSigning};
use flotilla_operator::failover::inventory::{Inventory, ObjKey, PodInfo, ServiceInfo};
use flotilla_operator::failover::metrics::Metrics;
use flotilla_operator::failover::policy::{FailoverPolicy, ProbePolicy};
use flotilla_operator::failover::promtext;
use flotilla_operator::verdict_keys::VerdictKeys;
use flotilla_operator::write::Leadership;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use measure::{failures_since, random_phase};
use sim::*;

#[path = "failover/exposition.rs"]
mod exposition;
#[path = "failover/readiness.rs"]
mod readiness;
#[path = "failover/rollout.rs"]
mod rollout;

#[derive(Parser, Debug)]
struct Args {
    /// Failover runs.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Pods for the CPU measurement (multiples of 250).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Length of the CPU measurement.
    #[arg(long, default_value_t = 10)]
    cpu_seconds: u64,
    /// Batch window of the prober during the CPU measurement, in milliseconds (default: the
    /// engine's); 0 wakes the engine for each due probe.
    #[arg(long)]
    batch_window_ms: Option<u64>,
    /// Skip the CPU measurement.
    #[arg(long)]
    skip_cpu: bool,
    /// Measure the prober CPU as a standby's (no verdicts signed or sent) instead of the
    /// leader's, for comparison.
    #[arg(long)]
    standby: bool,
    /// Measure the prober CPU with readiness watches off (every pod probed each period), for
    /// comparison; by default the test pods serve watches with heartbeats and the prober
    /// keeps one open per pod.
    #[arg(long)]
    no_watch: bool,
    /// The heartbeat the prober asks of watched pods, in milliseconds (default: the engine's,
    /// a quarter of the period), for comparison.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Scrape every pod's metrics during the CPU measurement (`failover.scrapeMetrics`); the
    /// pods serve a kit service's exposition whose counters grow by 10 requests a second.
    #[arg(long)]
    scrape: bool,
    /// Measure pods that are only scraped for their request figures (a MicroService with
    /// `health.reportTraffic: true` and no failover), every 5 s, instead of probed.
    #[arg(long)]
    scrape_only: bool,
    /// Skip the failover runs.
    #[arg(long)]
    skip_failover: bool,
    /// Runs of each readiness comparison (0 skips it); runs with Kubernetes' default probe
    /// settings take about half a minute each.
    #[arg(long, default_value_t = 3)]
    readiness_runs: usize,
    /// Bad guarded releases to measure with failover on, and again with it off (0 skips them).
    #[arg(long, default_value_t = 10)]
    rollout_runs: usize,
    /// Internal: serve this many test pods and print their ports.
    #[arg(long, hide = true)]
    serve: Option<usize>,
    /// Internal: the served pods' metrics grow as a service's would.
    #[arg(long, hide = true)]
    serve_metrics: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if let Some(n) = args.serve {
            return serve(n, args.serve_metrics).await;
        }
        if !args.skip_cpu {
            cpu(&args).await?;
        }
        if !args.skip_failover {
            failover(&args).await?;
        }
        if args.readiness_runs > 0 {
            readiness::compare(args.readiness_runs).await?;
        }
        if args.rollout_runs > 0 {
            rollout::measure(args.rollout_runs).await?;
        }
        Ok(())
    })
}

/// Child process: `n` test pods in groups of 250 (one port per group); prints the ports. With
/// `metrics`, their `/metrics` answer a kit service's exposition, updated every second.
async fn serve(n: usize, metrics: bool) -> Result<()> {
    let mut all = Vec::new();
    let mut ports = Vec::new();
    for g in 0..n.div_ceil(250) {
        let size = u8::try_from((n - g * 250).min(250))?;
        let group = pods::start_group(4, u8::try_from(g)?, size).await?;
        for p in &group {
            p.set_watch(true);
        }
        ports.push(group[0].addr.port().to_string());
        all.push(group);
    }
    println!("ports {}", ports.join(" "));
    let all = Arc::new(all);
    if metrics {
        let pods = all.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let text = exposition::text(start.elapsed().as_secs(), 10.0);
                for p in pods.iter().flatten() {
                    p.set_metrics(&text);
                }
            }
        });
    }
    // Serve until the parent closes stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 1];
        std::io::Read::read(&mut std::io::stdin(), &mut buf)
    })
    .await;
    drop(all);
    Ok(())
}

/// This process's resident set size in KiB.
fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// (utime + stime) of this process in seconds (Linux clock ticks of 1/100 s).
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the `(comm)` part; utime and stime are fields 14 and 15 overall.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / 100.0)
}

async fn cpu(args: &Args) -> Result<()> {
    let exe = std::env::current_exe()?;
    let pods_arg = args.pods.to_string();
    let mut child_args = vec!["--serve", pods_arg.as_str()];
    if args.scrape || args.scrape_only {
        child_args.push("--serve-metrics");
    }
    let mut child = tokio::process::Command::new(exe)
        .args(child_args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await?;
    let ports: Vec<u16> = line
        .trim()
        .strip_prefix("ports ")
        .context("child did not report ports")?
        .split(' ')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let mut services = Vec::new();
    let mut pods = Vec::new();
    for (g, port) in ports.iter().enumerate() {
        let name = format!("svc{g}");
        services.push(ServiceInfo {
            key: ObjKey::new("bench", &name),
            uid: None,
            generation: Some(1),
            failover_enabled: !args.scrape_only,
            analysing: false,
            probe: ProbePolicy {
                port: *port,
                ..ProbePolicy::default()
            },
            failover: FailoverPolicy {
                scrape_metrics: args.scrape,
                ..FailoverPolicy::default()
            },
            port_name: "http".into(),
            // The request figures, as a service scraping its metrics reports them by default.
            report_traffic: args.scrape || args.scrape_only,
            scrape_only: args.scrape_only,
            status: None,
            traffic: None,
            conditions: vec![],
        });
        let size = (args.pods - g * 250).min(250);
        for k in 1..=size {
            pods.push(PodInfo {
                key: ObjKey::new("bench", format!("{name}-{k}")),
                service: name.clone(),
                ip: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                    127,
                    4,
                    u8::try_from(g)?,
                    u8::try_from(k)?,
                ))),
                ready: true,
                serves: [(labels::serves(&name), "true".to_owned())].into(),
                uid: Some(format!("uid-{name}-{k}")),
                canary: false,
            });
        }
    }
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Inventory::from_parts(services, pods)));
    let metrics = Metrics::new()?;
    // The leader's engine, as shipped: verdicts signed with the operator's key and sent.
    let (lead, leadership) = Leadership::new();
    if !args.standby {
        lead.lead_unbounded();
    }
    let mut cfg = EngineConfig {
        verdicts: Some(VerdictSigning {
            keys: Arc::new(VerdictKeys::ephemeral()),
            leadership,
        }),
        ..EngineConfig::default()
    };
    if let Some(ms) = args.batch_window_ms {
        cfg.batch_window = Duration::from_millis(ms);
    }
    cfg.watch = !args.no_watch;
    cfg.watch_heartbeat = args.heartbeat_ms.map(Duration::from_millis);
    let window = cfg.batch_window;
    let rss_before = rss_kib()?;
    let (mut out, _thread) = engine::spawn(rx, metrics.clone(), cfg)?;
    // Drain outputs as a writer would.
    tokio::spawn(async move { while out.notices.recv().await.is_some() {} });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probes = |m: &Metrics| -> u64 {
        [
            "success",
            "bad_status",
            "timeout",
            "connect_error",
            "error_rate",
        ]
        .iter()
        .map(|r| m.probes.with_label_values(&[r]).get())
        .sum()
    };
    let (c0, p0, t0) = (cpu_seconds()?, probes(&metrics), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.cpu_seconds)).await;
    let (c1, p1, t1) = (cpu_seconds()?, probes(&metrics), Instant::now());
    let wall = (t1 - t0).as_secs_f64();
    let cores = (c1 - c0) / wall;
    let per_1000 = cores * 1000.0 / args.pods as f64;
    let failed = metrics.probes.with_label_values(&["timeout"]).get()
        + metrics.probes.with_label_values(&["connect_error"]).get();
    let rss_after = rss_kib()?;
    println!(
        "(d) prober CPU: {cores:.4} cores for {} pods at 500 ms = {per_1000:.4} cores per 1,000 pods \
         ({:.0} probe results/s, {} failed, {} skipped; {p1} since the start; batch window {} ms; \
         readiness watches {} open{}{}{})",
        args.pods,
        (p1 - p0) as f64 / wall,
        failed,
        metrics.probes.with_label_values(&["skipped"]).get(),
        window.as_millis(),
        metrics.readiness_watches.get(),
        if args.no_watch { ", off" } else { "" },
        args.heartbeat_ms
            .map(|ms| format!(", heartbeat {ms} ms"))
            .unwrap_or_default(),
        if args.scrape_only {
            "; pods only scraped, every 5 s".to_owned()
        } else if args.scrape {
            let rejected: Vec<String> = flotilla_operator::failover::scrape::Rejected::ALL
                .iter()
                .map(|r| (r.label(), metrics.scrape_rejected.with_label_values(&[r.label()]).get()))
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            format!(
                "; metrics scraped every second, scrapes rejected: [{}]",
                rejected.join(", ")
            )
        } else {
            String::new()
        },
    );
    println!(
        "(d) prober memory: RSS {rss_before} KiB before the engine, {rss_after} KiB after \
         {} s of probing: {:.1} KiB per pod",
        args.cpu_seconds + 3,
        (rss_after.saturating_sub(rss_before)) as f64 / args.pods as f64
    );
    drop(child.stdin.take());
    let _ = child.kill().await;
    Ok(())
}

async fn get_text(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8(buf)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// Unix time now, in seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The last failover's steps (first failure, decided, written) as unix seconds.
async fn timeline(addr: SocketAddr) -> Result<[f64; 3]> {
    let samples = promtext::parse(&get_text(addr, "/metrics").await?)?;
    let step = |name: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == "flotilla_failover_last_failover_timestamp_seconds"
                    && s.label("step") == Some(name)
            })
            .map_or(f64::NAN, |s| s.value)
    };
    Ok([step("first_failure"), step("decided"), step("written")])
}

/// (sum, count) of the detection histogram for failovers.
async fn detection(addr: SocketAddr) -> Result<(f64, f64)> {
    let samples = promtext::parse(&get_text(addr, "/metrics").await?)?;
    let pick = |name: &str| {
        samples
            .iter()
            .find(|s| s.name == name && s.label("change") == Some("failover"))
            .map_or(0.0, |s| s.value)
    };
    Ok((
        pick("flotilla_failover_detection_seconds_sum"),
        pick("flotilla_failover_detection_seconds_count"),
    ))
}

pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

async fn failover(args: &Args) -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let maddr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let sim = Sim::start_with("failover-bench", Some(maddr)).await?;
    sim.create_users("users-backup", 2, |_| {}).await?;
    sim.create_users("users", 2, |s| {
        s.failover.enabled = true;
        s.failover.fallback = Some("users-backup".into());
        // Defaults for detection; a short recovery and no flap limit so runs can repeat.
        s.failover.recover_after_seconds = 2;
        s.failover.max_flaps = 1000;
    })
    .await?;
    let fallback = sim.ready_pods("users-backup", 2).await?;
    let fallback_ips: std::collections::BTreeSet<String> = fallback.iter().map(pod_ip).collect();
    let vip = sim.vip("users").await?;
    let traffic = Traffic::start(vip, "/users", Duration::from_millis(10));
    let (mut det, mut switch, mut window) = (Vec::new(), Vec::new(), Vec::new());
    let (mut steps, mut decide_to_write): (Vec<[f64; 5]>, Vec<f64>) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let primary = sim.ready_pods("users", 2).await?;
        let primary_ips: std::collections::BTreeSet<String> = primary.iter().map(pod_ip).collect();
        sim.poll("primary active and serving", || async {
            let ok = sim.active("users").await?.as_deref() == Some("primary")
                && sim.ready_endpoints("users").await? == primary_ips
                && traffic.last_ok(30);
            Ok(ok.then_some(()))
        })
        .await?;
        random_phase(Duration::from_millis(500)).await;
        let (s0, n0) = detection(maddr).await?;
        let (t_fault, wall_fault) = (Instant::now(), unix_now());
        for p in &primary {
            set_fault(p, r#"{"unhealthy": true, "errorRate": 1.0}"#).await?;
        }
        let (t_switch, wall_switch) = loop {
            if sim.ready_endpoints("users").await? == fallback_ips {
                break (Instant::now(), unix_now());
            }
            if t_fault.elapsed() > WAIT {
                sim.print_report().await;
                bail!("run {run}: no switch");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        sim.poll("clients succeed again", || async {
            Ok(traffic.last_ok(30).then_some(()))
        })
        .await?;
        let (s1, n1) = detection(maddr).await?;
        if n1 - n0 >= 1.0 {
            det.push((s1 - s0) / (n1 - n0));
        }
        switch.push((t_switch - t_fault).as_secs_f64());
        let (errors, w) = failures_since(traffic.outcomes(), t_fault);
        window.push(w);
        let last_err = errors.last().copied().unwrap_or(t_fault);
        let client_ok = traffic
            .outcomes()
            .into_iter()
            .find(|(t, ok)| *t > last_err && *ok)
            .map_or(f64::NAN, |(t, _)| (t - t_fault).as_secs_f64());
        let [first, decided, written] = timeline(maddr).await?.map(|t| t - wall_fault);
        steps.push([first, decided, written, wall_switch - wall_fault, client_ok]);
        decide_to_write.push(written - decided);
        println!(
            "run {run}: detection {:.3}s, fault→switch {:.3}s, client error window {w:.3}s ({} failed requests); \
             from the fault: first failing probe {first:.3}s → decided {decided:.3}s → written {written:.3}s → \
             endpoints {:.3}s → client ok {client_ok:.3}s",
            det.last().copied().unwrap_or(f64::NAN),
            (t_switch - t_fault).as_secs_f64(),
            errors.len(),
            wall_switch - wall_fault,
        );
        for p in &primary {
            clear_fault(p).await?;
        }
    }
    println!("runs: {}", args.runs);
    println!(
        "(a) detection       p50 {:.3}s p99 {:.3}s",
        pct(&mut det, 50.0),
        pct(&mut det, 99.0)
    );
    println!(
        "(b) fault → switch  p50 {:.3}s p99 {:.3}s",
        pct(&mut switch, 50.0),
        pct(&mut switch, 99.0)
    );
    println!(
        "(c) client errors   p50 {:.3}s p99 {:.3}s",
        pct(&mut window, 50.0),
        pct(&mut window, 99.0)
    );
    println!(
        "(e) decided → written p50 {:.3}s p99 {:.3}s",
        pct(&mut decide_to_write, 50.0),
        pct(&mut decide_to_write, 99.0)
    );
    let names = [
        "first failing probe",
        "decided",
        "written",
        "endpoints changed",
        "first client ok",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut v: Vec<f64> = steps
            .iter()
            .map(|s| s[i])
            .filter(|x| x.is_finite())
            .collect();
        println!(
            "(e) fault → {name:<20} p50 {:.3}s p99 {:.3}s",
            pct(&mut v, 50.0),
            pct(&mut v, 99.0)
        );
    }
    drop(traffic);
    sim.shutdown().await;
    Ok(())
}
