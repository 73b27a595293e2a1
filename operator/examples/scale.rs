//! Scale benchmark: N MicroServices on a kubesim API server, reconciled by the in-process
//! operator. Prints the time to converge all of them, the reconcile throughput, and the time and
//! write count of a full resync after an operator restart (expected: zero writes).
//!
//! `cargo run -p flotilla-operator --release --example scale -- [N]` (default N = 500).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_crds::{MicroService, MicroServiceSpec};
use flotilla_operator::OperatorConfig;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kubesim::{Cluster, ClusterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "scale";
const TIMEOUT: Duration = Duration::from_secs(600);

async fn metrics(addr: SocketAddr) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf)
}

fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .fold(0.0, |a, b| a + b)
}

async fn converged(api: &Api<MicroService>, n: usize) -> Result<usize> {
    // A list that does not answer within 10 s counts as "not yet" and is retried.
    let Ok(list) =
        tokio::time::timeout(Duration::from_secs(10), api.list(&ListParams::default())).await
    else {
        return Ok(0);
    };
    let list = list?;
    Ok(list
        .items
        .iter()
        .filter(|m| {
            let observed = m.status.as_ref().and_then(|s| s.observed_generation);
            observed.is_some() && observed == m.metadata.generation
        })
        .count()
        .min(n))
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

#[tokio::main]
async fn main() -> Result<()> {
    flotilla_operator::telemetry::init(flotilla_operator::telemetry::LogFormat::Text);
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(500);
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
    Api::<Namespace>::all(client.clone())
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

    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (stop, handle) = start(client.clone(), addr);
    let t0 = Instant::now();
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
    let created = t0.elapsed();
    loop {
        let done = converged(&api, n).await?;
        if done == n {
            break;
        }
        eprintln!("{:.1} s: {done}/{n} converged", t0.elapsed().as_secs_f64());
        if Instant::now() > deadline {
            bail!("not converged within {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let converge = t0.elapsed();
    let text = metrics(addr).await.context("metrics")?;
    let reconciles = sum(&text, "flotilla_reconcile_total");
    let converge_writes = writes(&text);
    let _ = stop.send(());
    handle.await??;

    // Restart: every MicroService is reconciled again; nothing should be written.
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (stop, handle) = start(client.clone(), addr);
    let t1 = Instant::now();
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
    cluster.shutdown().await;

    println!("microservices:               {n}");
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
