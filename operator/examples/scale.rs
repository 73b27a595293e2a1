//! Scale benchmark: N MicroServices on a kubesim API server, reconciled by the operator.
//!
//! - default (warm): the operator runs while the N MicroServices are created. Prints the time to
//!   converge all of them, the reconcile throughput, and the time and write count of a full
//!   resync after an operator restart (expected: zero writes).
//! - `--cold`: the N MicroServices are created while the operator is not running, then it
//!   starts. Prints the time from start to all converged, and per MicroService the reconcile
//!   runs, child writes, status writes, Events and API requests (counted on the operator's own
//!   client, with a breakdown by verb and resource).
//!
//! Convergence (every MicroService's `status.observedGeneration` equals its generation) is
//! followed with a watch, so the benchmark adds no list requests of its own to the load.
//! - `--rss`: runs the release operator binary as a child process against the same API server
//!   and prints its resident memory idle (no MicroServices), with N MicroServices and their
//!   3·N children converged, and with 1,000 failover-enabled pods being probed on top (see
//!   `scale/rss.rs`). With `--cold` as well, the MicroServices are created before the binary
//!   starts, and the time from its start to all converged is printed instead of the idle figure.
//!
//! `cargo run -p flotilla-operator --release --example scale -- [N] [--cold] [--rss]`
//! (default N = 500; `--rss` needs `cargo build --release -p flotilla-operator` first).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_crds::{MicroService, MicroServiceSpec};
use flotilla_operator::OperatorConfig;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use kubesim::{Cluster, ClusterConfig};

#[path = "scale/rss.rs"]
mod rss;

const NS: &str = "scale";
const TIMEOUT: Duration = Duration::from_secs(600);

/// The operator's `/metrics` text, through the tests' one HTTP client.
async fn metrics(addr: SocketAddr) -> Result<String> {
    let reply = flotilla_testkit::http::get(&format!("http://{addr}/metrics")).await?;
    if reply.status != 200 {
        bail!("GET /metrics answered {}", reply.status);
    }
    Ok(reply.body)
}

fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .fold(0.0, |a, b| a + b)
}

/// Child writes (created, updated, deleted) recorded in a metrics text.
fn writes(text: &str) -> f64 {
    ["created", "updated", "deleted"]
        .iter()
        .flat_map(|o| {
            [
                "Deployment",
                "Service",
                "ConfigMap",
                "HorizontalPodAutoscaler",
            ]
            .iter()
            .map(move |k| format!("flotilla_child_writes_total{{kind=\"{k}\",outcome=\"{o}\"}}"))
        })
        .map(|series| sum(text, &series))
        .fold(0.0, |a, b| a + b)
}

/// API requests of the operator's client: all, writes (anything but GET), status writes, and
/// Event writes (counted among the writes), and all of them by verb and resource.
#[derive(Default)]
struct Requests {
    all: AtomicU64,
    writes: AtomicU64,
    status_writes: AtomicU64,
    events: AtomicU64,
    by_kind: Mutex<BTreeMap<String, u64>>,
}

/// "verb resource[/subresource]" of a request, e.g. `patch microservices/status`.
fn request_kind(method: &http::Method, uri: &http::Uri) -> String {
    let segs: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let skip = if segs.first() == Some(&"api") { 2 } else { 3 };
    let rest = segs.get(skip..).unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        _ => rest,
    };
    let resource = rest.first().copied().unwrap_or("?");
    let sub = rest.get(2).map(|s| format!("/{s}")).unwrap_or_default();
    let watch = uri.query().is_some_and(|q| q.contains("watch=true"));
    let verb = match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if rest.len() >= 2 => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PATCH => "patch",
        http::Method::PUT => "update",
        http::Method::DELETE => "delete",
        _ => "other",
    };
    format!("{verb} {resource}{sub}")
}

/// A client for `url` that counts every request it sends into `counts`.
fn counting_client(url: &str, counts: Arc<Requests>) -> Result<Client> {
    let config = kube::Config::new(url.parse()?);
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        counts.all.fetch_add(1, Ordering::Relaxed);
        *counts
            .by_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(request_kind(req.method(), req.uri()))
            .or_default() += 1;
        if req.method() != http::Method::GET {
            counts.writes.fetch_add(1, Ordering::Relaxed);
            if req.uri().path().contains("/events") {
                counts.events.fetch_add(1, Ordering::Relaxed);
            } else if req.uri().path().ends_with("/status") {
                counts.status_writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build())
}

fn start(
    client: Client,
    addr: SocketAddr,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), flotilla_operator::Error>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = OperatorConfig {
        metrics_addr: Some(addr),
        ..OperatorConfig::default()
    };
    let handle = tokio::spawn(flotilla_operator::run(client, config, async move {
        let _ = rx.await;
    }));
    (tx, handle)
}

/// Which figures to produce.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Warm,
    Cold,
    Rss,
}

/// The cluster with the CRD and the namespace, and a client of the benchmark's own.
async fn setup() -> Result<(Cluster, Api<MicroService>)> {
    let cluster = Cluster::start(ClusterConfig::default()).await?;
    let client = cluster.client();
    eprintln!("kubesim at {}", cluster.url());
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            flotilla_crds::CRD_NAME,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(flotilla_crds::crd()),
        )
        .await?;
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NS.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client)
        .create(&PostParams::default(), &ns)
        .await?;
    // The benchmark's own requests use a client of their own, apart from the operator's.
    let own = Client::try_from(kube::Config::new(cluster.url().parse()?))?;
    let api: Api<MicroService> = Api::namespaced(own, NS);
    let deadline = Instant::now() + TIMEOUT;
    while api.list(&ListParams::default()).await.is_err() {
        if Instant::now() > deadline {
            bail!("CRD never served");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((cluster, api))
}

async fn create_all(api: &Api<MicroService>, n: usize) -> Result<()> {
    for i in 0..n {
        let mut spec = MicroServiceSpec::with_image("flotilla/users:0.1.0");
        spec.config = Some([("INDEX".to_string(), i.to_string())].into());
        if i % 10 == 0 {
            spec.dependencies = Some(vec![format!("svc-{}", i + 1)]);
        }
        api.create(
            &PostParams::default(),
            &MicroService::new(&format!("svc-{i}"), spec),
        )
        .await?;
    }
    Ok(())
}

/// Waits, following a watch, until all `n` MicroServices have a status for their generation;
/// returns the time since `t0`.
async fn wait_converged(api: &Api<MicroService>, n: usize, t0: Instant) -> Result<Duration> {
    let mut done: HashSet<String> = HashSet::new();
    let mut events = std::pin::pin!(watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut report = Instant::now();
    while done.len() < n {
        let next = tokio::time::timeout_at(deadline, events.next()).await;
        let ms = match next {
            Err(_) => bail!("not converged within {TIMEOUT:?}"),
            Ok(None) => bail!("the MicroService watch ended"),
            Ok(Some(ms)) => ms?,
        };
        let observed = ms.status.as_ref().and_then(|s| s.observed_generation);
        if observed.is_some() && observed == ms.metadata.generation {
            done.insert(ms.name_any());
        }
        if report.elapsed() > Duration::from_secs(1) {
            report = Instant::now();
            let len = done.len();
            eprintln!("{:.1} s: {len}/{n} converged", t0.elapsed().as_secs_f64());
        }
    }
    Ok(t0.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let _telemetry =
        flotilla_operator::telemetry::init(flotilla_operator::telemetry::LogFormat::Text);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(500);
    let created_first = args.iter().any(|a| a == "--cold");
    let mode = if args.iter().any(|a| a == "--rss") {
        Mode::Rss
    } else if created_first {
        Mode::Cold
    } else {
        Mode::Warm
    };
    let (cluster, api) = setup().await?;
    println!("microservices:               {n}");
    match mode {
        Mode::Warm => warm(&cluster, &api, n).await?,
        Mode::Cold => cold(&cluster, &api, n).await?,
        Mode::Rss => rss::rss(&cluster, &api, n, created_first).await?,
    }
    cluster.shutdown().await;
    Ok(())
}

async fn warm(cluster: &Cluster, api: &Api<MicroService>, n: usize) -> Result<()> {
    let client = cluster.client();
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (stop, handle) = start(client.clone(), addr);
    let t0 = Instant::now();
    create_all(api, n).await?;
    let created = t0.elapsed();
    let converge = wait_converged(api, n, t0).await?;
    let text = metrics(addr).await.context("metrics")?;
    let reconciles = sum(&text, "flotilla_reconcile_total");
    let converge_writes = writes(&text);
    let _ = stop.send(());
    handle.await??;

    // Restart: every MicroService is reconciled again; nothing should be written.
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (stop, handle) = start(client, addr);
    let t1 = Instant::now();
    let deadline = t1 + TIMEOUT;
    let text = loop {
        if let Ok(text) = metrics(addr).await {
            if sum(
                &text,
                "flotilla_child_writes_total{kind=\"HorizontalPodAutoscaler\"",
            ) >= n as f64
            {
                break text;
            }
        }
        if Instant::now() > deadline {
            bail!("resync did not finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resync = t1.elapsed();
    let written = writes(&text);
    let _ = stop.send(());
    handle.await??;

    println!(
        "create requests issued in:   {:.2} s",
        created.as_secs_f64()
    );
    println!(
        "all converged after:         {:.2} s ({:.0} MicroServices/s)",
        converge.as_secs_f64(),
        n as f64 / converge.as_secs_f64()
    );
    println!("reconcile runs to converge:  {reconciles:.0}");
    println!("child writes to converge:     {converge_writes:.0}");
    println!(
        "resync after restart:        {:.2} s ({:.0} MicroServices/s)",
        resync.as_secs_f64(),
        n as f64 / resync.as_secs_f64()
    );
    println!("child writes during resync:  {written:.0}");
    Ok(())
}

async fn cold(cluster: &Cluster, api: &Api<MicroService>, n: usize) -> Result<()> {
    create_all(api, n).await?;
    let counts = Arc::new(Requests::default());
    let client = counting_client(cluster.url(), counts.clone())?;
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let t0 = Instant::now();
    let (stop, handle) = start(client, addr);
    let converge = wait_converged(api, n, t0).await?;
    let text = metrics(addr).await.context("metrics")?;
    let reconciles = sum(&text, "flotilla_reconcile_total");
    let child_writes = writes(&text);
    let _ = stop.send(());
    handle.await??;
    let per = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / n as f64;
    println!(
        "cold start: all converged {:.2} s after the operator started ({:.0} MicroServices/s)",
        converge.as_secs_f64(),
        n as f64 / converge.as_secs_f64()
    );
    println!(
        "reconcile runs:              {reconciles:.0} ({:.2} per MicroService)",
        reconciles / n as f64
    );
    println!(
        "child writes:                {child_writes:.0} ({:.2} per child, 3 children each)",
        child_writes / (3 * n) as f64
    );
    println!(
        "API requests per MicroService: {:.2} (writes {:.2}: status writes {:.2}, Events {:.2})",
        per(&counts.all),
        per(&counts.writes),
        per(&counts.status_writes),
        per(&counts.events)
    );
    println!("API requests by verb and resource (total, per MicroService):");
    let by_kind = counts.by_kind.lock().unwrap_or_else(|p| p.into_inner());
    for (kind, count) in by_kind.iter() {
        println!("  {kind:<42} {count:>7} {:>6.2}", *count as f64 / n as f64);
    }
    Ok(())
}
