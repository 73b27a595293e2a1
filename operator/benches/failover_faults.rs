//! Failover by kind of fault, with the operator's readiness watch on and off, on kubesim.
//!
//! Two MicroServices fail over to a fallback each: `users` (HTTP) → `users-backup` and
//! `orders` (gRPC) → `orders-backup`, 2 pods apiece. Four clients run at once, each sending one
//! request at a time every 10 ms: `new-connection` (HTTP/1.1, a fresh connection per request,
//! 5 s timeout), `pooled` (reqwest keep-alive pool) and `http2` (reqwest, HTTP/2 prior knowledge)
//! against `users`' cluster IP (2 s timeout), and `grpc` (one tonic channel, `ListOrders`, 2 s
//! timeout) against `orders`'. A fifth, `new-conn sent`, sends a request on a fresh connection
//! to `users` every 50 ms without waiting for the earlier ones (5 s timeout) and is reported by
//! send time: its error window is how long new connections kept going to failing pods, which
//! a hang's waiting clients cannot show (each is held by one request until its timeout). Each run injects one fault, at a random point of the probe
//! schedule, into both primary pods of both services at once:
//!
//! - `self-detected`: the pod's own readiness fails (`/admin/faults` `{"unhealthy": true}`);
//! - `crash`: the process is SIGKILLed and the kubelet restarts it (it notices at its next
//!   relist, every `--relist-period-ms`, 1 s as on a real node);
//! - `hang`: the process is SIGSTOPped, and SIGCONTed once every client succeeds again or
//!   `--hang-seconds` after the fault, whichever is first (clients holding a connection to a
//!   hung pod fail until it resumes or dies: its TCP liveness probe fails only once the listen
//!   backlog is full, and the SIGTERM that follows waits out the 30 s grace period);
//! - `bad-answers`: readiness passes, every API call answers 500 (`{"errorRate": 1.0}`); only
//!   the scraped error rate tells (`scrapeMetrics`, `maxErrorRate` 0.5, over
//!   `--error-window-seconds`).
//!
//! The operator runs in-process with `readiness_watch` on, then off (restarted between the two,
//! on the same cluster and pods), alternating which goes first from run to run and shuffling
//! the faults within each, so both modes see the same machine. Between runs everything
//! recovers: faults undone, the primary active and in its Service's endpoints, every client
//! succeeding and none left on a fallback pod. A run is measured until every client succeeds
//! again, or until the operator fails back, whichever is first: with bad answers a failback
//! comes with the fault still on (ejected pods get no traffic, so their error rate is unknown
//! and they count as healthy again a window later), after a crash once the kubelet restarted
//! the pods. Such runs are counted, their errors up to the failback.
//!
//! Prints a line per run, then per fault kind: each client's error window (first to last failed
//! request after the fault) p50/p99 with the watch on and off and their ratio off/on, failed
//! requests, and the time from the fault to the end of the last failed request (for
//! `new-conn sent`: to the sending of the last failed one); then where the time went, from the
//! fault: the first failing observation, the decision and the label writes acknowledged (the
//! operator's `flotilla_failover_last_failover_timestamp_seconds`, which keeps the last
//! failover only, so of the two services' failovers the later), both Services' endpoints
//! changed (and each one's), every client succeeding again, and the detection histogram's mean
//! for the run's failovers.
//!
//! `cargo build -p users -p orders -p flotilla-operator` first, then
//! `cargo bench -p flotilla-operator --bench failover_faults -- --runs 20`
//! (`--faults crash,hang` for some kinds only, `--watch on` for one mode,
//! `--relist-period-ms 0` for a kubelet that notices exits at once).

#[allow(dead_code)]
#[path = "../tests/it/failover_common/clients.rs"]
mod clients;
#[path = "failover_faults/faults.rs"]
mod faults;
#[path = "common/measure.rs"]
mod measure;
#[path = "failover_faults/open_loop.rs"]
mod open_loop;
#[path = "failover_faults/operator_metrics.rs"]
mod operator_metrics;
#[path = "failover_faults/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../tests/it/failover_common/sim.rs"]
mod sim;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use clients::{api_requests_of, create_orders, Client, Kind};
use faults::Fault;
use k8s_openapi::api::core::v1::Pod;
use measure::{failures_since, random_phase};
use open_loop::OpenLoop;
use operator_metrics::{unix_now, Scrape};
use rand::seq::SliceRandom;
use report::Run;
use sim::*;

/// Interval of every client's requests.
const EVERY: Duration = Duration::from_millis(10);
/// Interval of the open-loop client's requests: it does not slow down when the pods do, so it
/// sends less often than the others to keep from loading a slow pod into probe timeouts.
const OPEN_LOOP_EVERY: Duration = Duration::from_millis(50);
/// The engine's probe period: faults land at a random point of it.
const PROBE_PERIOD: Duration = Duration::from_millis(500);

#[derive(Parser, Debug)]
struct Args {
    /// Runs of each fault kind with the readiness watch on, and as many with it off.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Fault kinds, comma-separated: self-detected, crash, hang, bad-answers.
    #[arg(long, value_delimiter = ',', default_values_t = Fault::ALL)]
    faults: Vec<Fault>,
    /// Readiness-watch modes, comma-separated: on, off.
    #[arg(long, value_delimiter = ',', default_values_t = [Watch::On, Watch::Off])]
    watch: Vec<Watch>,
    /// How often the kubelet relists containers to notice an exit, in ms (a real kubelet's
    /// period is 1,000; 0 notices at once).
    #[arg(long, default_value_t = 1000)]
    relist_period_ms: u64,
    /// The primaries' `errorRateWindowSeconds`: a total error rate crosses `maxErrorRate` 0.5
    /// about half a window after it starts, and leaves the window a window after it stops.
    #[arg(long, default_value_t = 2)]
    error_window_seconds: i32,
    /// Longest a hang lasts, in seconds from the fault.
    #[arg(long, default_value_t = 10)]
    hang_seconds: u64,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The operator's readiness watch, on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Watch {
    On,
    Off,
}

impl std::fmt::Display for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Watch::On => "on",
            Watch::Off => "off",
        })
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(&args))
}

/// A primary and the fallback it fails over to.
struct Pair {
    primary: &'static str,
    fallback: &'static str,
    fallback_pods: Vec<Pod>,
    fallback_ips: BTreeSet<String>,
}

/// The five clients, all running at once, in [`report::CLIENTS`] order.
struct Clients {
    new_connection: Traffic,
    kept: [Client; 3],
    open_loop: OpenLoop,
}

impl Clients {
    async fn start(users: SocketAddr, orders: SocketAddr) -> Result<Clients> {
        Ok(Clients {
            new_connection: Traffic::start(users, "/users", EVERY),
            kept: [
                Client::start(Kind::Pooled, users, EVERY).await?,
                Client::start(Kind::Http2, users, EVERY).await?,
                Client::start(Kind::Grpc, orders, EVERY).await?,
            ],
            open_loop: OpenLoop::start(users, "/users", OPEN_LOOP_EVERY),
        })
    }

    /// Outcomes at the end of each request; the open-loop client's at its sending.
    fn outcomes(&self, i: usize) -> Vec<(Instant, bool)> {
        match i {
            0 => self.new_connection.outcomes(),
            4 => self.open_loop.by_send_time(),
            _ => self.kept[i - 1].outcomes(),
        }
    }

    /// Whether every client finished at least `n` requests since `since` and the last `n` of
    /// them succeeded (a client stuck in a request that hangs has finished none).
    fn ok_since(&self, since: Instant, n: usize) -> bool {
        (0..report::CLIENTS.len()).all(|i| {
            let o: Vec<bool> = self
                .outcomes(i)
                .into_iter()
                .filter(|(t, _)| *t >= since)
                .map(|(_, ok)| ok)
                .collect();
            o.len() >= n && o[o.len() - n..].iter().all(|ok| *ok)
        })
    }
}

/// The cluster under test.
struct Bench {
    sim: Sim,
    metrics: SocketAddr,
    pairs: [Pair; 2],
    /// Read by the operator's configuration at each (re)start.
    watch: Arc<AtomicBool>,
    /// Longest a hang lasts.
    hang: Duration,
}

async fn bench(args: &Args) -> Result<()> {
    let (Some(&first), false) = (args.watch.first(), args.faults.is_empty()) else {
        bail!("--watch and --faults need at least one value each");
    };
    let started = Instant::now();
    let b = Bench::start(args, first).await?;
    let result = measure_all(&b, args, first).await;
    if result.is_err() {
        b.sim.print_report().await;
    }
    let runs = result?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "\n{} runs per fault kind and watch mode; faults in both primary pods of users (HTTP) \
         and orders (gRPC) at once; kubelet relist period {} ms; took {elapsed:.0}s",
        args.runs, args.relist_period_ms
    );
    for fault in Fault::ALL.into_iter().filter(|f| args.faults.contains(f)) {
        let note = match fault {
            Fault::Crash => format!(" (kubelet relist every {} ms)", args.relist_period_ms),
            Fault::Hang => format!(" (SIGCONT after at most {} s)", args.hang_seconds),
            Fault::BadAnswers => {
                format!(" (maxErrorRate 0.5 over {} s)", args.error_window_seconds)
            }
            _ => String::new(),
        };
        print!("{}", report::summary(fault, &runs, &note));
    }
    println!(
        "(known/decided/written: the operator's last failover of each run, i.e. the later of \
         the two services'; its metric has no service label)"
    );
    b.sim.shutdown().await;
    Ok(())
}

impl Bench {
    async fn start(args: &Args, first: Watch) -> Result<Bench> {
        let metrics: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let watch = Arc::new(AtomicBool::new(first == Watch::On));
        let relist = Duration::from_millis(args.relist_period_ms);
        let sim = {
            let watch = watch.clone();
            Sim::start_tuned(
                "failover-faults",
                Some(metrics),
                move |c| c.readiness_watch = watch.load(Ordering::SeqCst),
                move |node| {
                    node.relist_period = relist;
                    // Every crash run kills the same pods: a back-off that lets a run of 2 s
                    // reset it restarts them at once each time, as a real kubelet does only
                    // for a container's first crash in ten minutes.
                    node.backoff = kubesim::node::Backoff {
                        base: Duration::from_secs(1),
                        max: Duration::from_secs(1),
                    };
                },
            )
            .await?
        };
        let window = args.error_window_seconds;
        let tweak = move |s: &mut flotilla_crds::MicroServiceSpec, fallback: &str| {
            s.failover.enabled = true;
            s.failover.fallback = Some(fallback.into());
            // A short recovery and no flap limit so runs can repeat.
            s.failover.recover_after_seconds = 2;
            s.failover.max_flaps = 1000;
            s.failover.scrape_metrics = true;
            s.failover.max_error_rate = Some(0.5);
            s.failover.error_rate_window_seconds = window;
        };
        sim.create_users("users-backup", 2, |_| {}).await?;
        sim.create_users("users", 2, |s| tweak(s, "users-backup"))
            .await?;
        create_orders(&sim, "orders-backup", 2, &[], |_| {}).await?;
        create_orders(&sim, "orders", 2, &[], |s| tweak(s, "orders-backup")).await?;
        let mut pairs = Vec::new();
        for (primary, fallback) in [("users", "users-backup"), ("orders", "orders-backup")] {
            let fallback_pods = sim.ready_pods(fallback, 2).await?;
            let fallback_ips = fallback_pods.iter().map(pod_ip).collect();
            pairs.push(Pair {
                primary,
                fallback,
                fallback_pods,
                fallback_ips,
            });
        }
        let pairs: [Pair; 2] = pairs.try_into().map_err(|_| anyhow::anyhow!("two pairs"))?;
        Ok(Bench {
            sim,
            metrics,
            pairs,
            watch,
            hang: Duration::from_secs(args.hang_seconds),
        })
    }

    /// Waits until the (re)started operator's engine has published a decision for both
    /// primaries.
    async fn engine_ready(&self) -> Result<()> {
        self.sim
            .poll("the operator's engine judging both primaries", || async {
                let m = Scrape::read(self.metrics).await?;
                let ok = self
                    .pairs
                    .iter()
                    .all(|p| m.healthy_endpoints(p.primary).is_some());
                Ok(ok.then_some(()))
            })
            .await
    }

    /// Restarts the operator with the readiness watch `on` or off.
    async fn switch_mode(&self, watch: Watch) -> Result<()> {
        self.sim.stop_operator().await?;
        self.watch.store(watch == Watch::On, Ordering::SeqCst);
        self.sim.start_operator().await?;
        self.engine_ready().await
    }

    /// Waits for full recovery: each primary active with its own 2 ready pods as the
    /// endpoints, every client succeeding, and no API request reaching a fallback pod (so the
    /// clients that keep connections are back on the primary). Returns the primaries' pods.
    async fn settle(&self, clients: &Clients) -> Result<Vec<Pod>> {
        let mut pods = Vec::new();
        let mut ips = Vec::new();
        for p in &self.pairs {
            let ready = self.sim.ready_pods(p.primary, 2).await?;
            ips.push(ready.iter().map(pod_ip).collect::<BTreeSet<_>>());
            pods.extend(ready);
        }
        let sim = &self.sim;
        let since = Instant::now();
        sim.poll("primaries active and serving", || async {
            for (p, ips) in self.pairs.iter().zip(&ips) {
                if sim.active(p.primary).await?.as_deref() != Some("primary")
                    || sim.ready_endpoints(p.primary).await? != *ips
                {
                    return Ok(None);
                }
            }
            Ok(clients.ok_since(since, 30).then_some(()))
        })
        .await?;
        let fallbacks: Vec<Pod> = self
            .pairs
            .iter()
            .flat_map(|p| p.fallback_pods.iter().cloned())
            .collect();
        sim.poll("no client on a fallback pod", || async {
            let before = api_requests_of(&fallbacks, PORT).await?;
            // The window in which a client on a fallback pod would show.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok((api_requests_of(&fallbacks, PORT).await? == before).then_some(()))
        })
        .await?;
        Ok(pods)
    }

    /// One fault, injected into every primary pod at once, measured, and undone.
    async fn run(&self, clients: &Clients, fault: Fault, watch: Watch) -> Result<Run> {
        let pods = self.settle(clients).await?;
        let pids = match fault {
            Fault::Crash | Fault::Hang => pods
                .iter()
                .map(faults::pid_of)
                .collect::<Result<Vec<_>>>()?,
            Fault::SelfDetected | Fault::BadAnswers => Vec::new(),
        };
        random_phase(PROBE_PERIOD).await;
        let before = Scrape::read(self.metrics).await?;
        let (t_fault, wall_fault) = (Instant::now(), unix_now());
        faults::inject(fault, &pods, &pids).await?;
        let mut switched = [f64::NAN; 2];
        while switched.iter().any(|s| s.is_nan()) {
            for (i, p) in self.pairs.iter().enumerate() {
                if switched[i].is_nan()
                    && self.sim.ready_endpoints(p.primary).await? == p.fallback_ips
                {
                    switched[i] = unix_now() - wall_fault;
                }
            }
            if t_fault.elapsed() > WAIT {
                bail!("{fault}: no switch to {} within {WAIT:?}", self.fallbacks());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Until every client succeeds again: a hang ends `hang` after the fault at the latest,
        // and a failback ends the measurement (with bad answers the next errors belong to the
        // next failover).
        let (mut ended, mut failed_back) = (false, None);
        while !clients.ok_since(t_fault, 30) {
            if failed_back.is_none() {
                for p in &self.pairs {
                    if self.sim.ready_endpoints(p.primary).await? != p.fallback_ips {
                        failed_back = Some(Instant::now());
                    }
                }
            }
            if fault == Fault::Hang && !ended && t_fault.elapsed() >= self.hang {
                faults::recover(fault, &pods, &pids).await?;
                ended = true;
            }
            if t_fault.elapsed() > WAIT {
                bail!("{fault}: the clients did not succeed again within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let clients_ok = t_fault.elapsed().as_secs_f64();
        let hang_ended_first = ended;
        let until = failed_back.unwrap_or_else(Instant::now);
        // Open-loop requests sent to a hung pod end with their timeout (or the hang): their
        // failures belong to the run.
        while !clients.open_loop.settled_before(until) {
            if fault == Fault::Hang && !ended && t_fault.elapsed() >= self.hang {
                faults::recover(fault, &pods, &pids).await?;
                ended = true;
            }
            if t_fault.elapsed() > WAIT {
                bail!("{fault}: open-loop requests still unanswered after {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = Scrape::read(self.metrics).await?;
        let mut run = Run {
            fault,
            watch: watch == Watch::On,
            window: [0.0; 5],
            failed: [0; 5],
            last_failure: [0.0; 5],
            endpoints: switched,
            steps: [f64::NAN; 5],
            detection: f64::NAN,
            failed_back: failed_back.is_some(),
            hang_ended_first,
        };
        for i in 0..report::CLIENTS.len() {
            let mut outcomes = clients.outcomes(i);
            outcomes.retain(|(t, _)| *t < until);
            let (errors, window) = failures_since(outcomes, t_fault);
            run.window[i] = window;
            run.failed[i] = errors.len();
            run.last_failure[i] = errors.last().map_or(0.0, |t| (*t - t_fault).as_secs_f64());
        }
        run.steps[3] = switched[0].max(switched[1]);
        // After a failback the operator's records are of a later failover.
        if failed_back.is_none() {
            let [first, decided, written] = after.last_failover();
            if written > wall_fault {
                run.steps[..3].copy_from_slice(&[first, decided, written].map(|t| t - wall_fault));
            }
            run.steps[4] = clients_ok;
            let ((s0, n0), (s1, n1)) = (before.detection(), after.detection());
            if n1 > n0 {
                run.detection = (s1 - s0) / (n1 - n0);
            }
        }
        if !ended {
            faults::recover(fault, &pods, &pids).await?;
        }
        Ok(run)
    }

    fn fallbacks(&self) -> String {
        self.pairs
            .iter()
            .map(|p| p.fallback)
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// Every run: per round, each watch mode in turn (alternating which goes first), each with the
/// fault kinds in a random order.
async fn measure_all(b: &Bench, args: &Args, first: Watch) -> Result<Vec<Run>> {
    let users = b.sim.vip("users").await?;
    let orders = b.sim.vip("orders").await?;
    b.engine_ready().await?;
    let mut current = first;
    let mut runs = Vec::new();
    for round in 0..args.runs {
        let mut modes = args.watch.clone();
        if round % 2 == 1 {
            modes.reverse();
        }
        for watch in modes {
            if watch != current {
                b.switch_mode(watch).await?;
                current = watch;
            }
            // Fresh clients for each mode: no connection carries over from the other.
            let clients = Clients::start(users, orders).await?;
            let mut faults = args.faults.clone();
            faults.shuffle(&mut rand::rng());
            for fault in faults {
                let run = b.run(&clients, fault, watch).await?;
                println!("{}", report::run_line(round, &run));
                runs.push(run);
            }
            // Recovered under the mode that injected the last fault, before any restart.
            b.settle(&clients).await?;
        }
    }
    Ok(runs)
}
