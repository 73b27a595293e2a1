//! `--rss`: the release operator binary as a child process, its resident memory idle, with N
//! MicroServices and their children, and with failover-enabled pods being probed.
//!
//! The probed pods have no kubelet behind them: the benchmark creates them through the API with
//! the labels the operator's pod template sets, a loopback pod IP (`127.4.g.k`) and the Ready
//! condition, and answers their probes (`/readyz`) and scrapes (`/metrics`) itself on one port
//! bound on every local address, so every pod IP reaches it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_crds::{labels, MicroService, MicroServiceSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::Api;
use kubesim::Cluster;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{create_all, metrics, sum, wait_converged, NS};

/// Failover-enabled MicroServices of the probed phase, and pods of each (one /24 of loopback
/// addresses per service, so at most 250).
const PROBED_SERVICES: usize = 4;
const PODS_PER_SERVICE: usize = 250;
/// How long probing runs before memory and the probe rate are read.
const SETTLE: Duration = Duration::from_secs(10);
/// Window over which the probe rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Resident and peak resident memory of a process, in MiB.
fn rss_of(pid: u32) -> Result<(f64, f64)> {
    flotilla_testkit::memory::resident_mib(&pid.to_string())
}

/// Requests answered by the pods' server.
#[derive(Default)]
struct Served {
    readyz: AtomicU64,
    metrics: AtomicU64,
}

/// One keep-alive HTTP/1.1 connection: `/readyz` answers 200, `/metrics` a small Prometheus
/// text, anything else 404. Request bodies are not expected (the prober sends GETs).
async fn serve_conn(stream: tokio::net::TcpStream, served: Arc<Served>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut close = false;
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            close |= header.eq_ignore_ascii_case("connection: close");
        }
        let response = match path.as_str() {
            "/readyz" => {
                served.readyz.fetch_add(1, Ordering::Relaxed);
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
                    .to_owned()
            }
            "/metrics" => {
                let n = served.metrics.fetch_add(1, Ordering::Relaxed);
                let body = format!(
                    "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
                     http_requests_total{{route=\"/api\",status=\"200\"}} {}\n\
                     http_requests_total{{route=\"/api\",status=\"500\"}} 0\n\
                     http_requests_total{{route=\"/readyz\",status=\"200\"}} {n}\n",
                    n * 10
                );
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_owned(),
        };
        write.write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// Serves every pod on one port of all local addresses; returns the port.
async fn start_pod_server(served: Arc<Served>) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                let _ = serve_conn(stream, served).await;
            });
        }
    });
    Ok(port)
}

/// A pod of the failover-enabled MicroService `svc` as its Deployment would make it: the
/// template's labels, Ready, with the pod IP `ip`.
async fn create_pod(api: &Api<Pod>, svc: &str, name: &str, ip: &str) -> Result<()> {
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [
                    (labels::NAME.to_owned(), svc.to_owned()),
                    (labels::INSTANCE.to_owned(), svc.to_owned()),
                    (
                        labels::MANAGED_BY.to_owned(),
                        labels::MANAGED_BY_VALUE.to_owned(),
                    ),
                    (labels::PART_OF.to_owned(), NS.to_owned()),
                    (labels::serves(svc), labels::SERVES_TRUE.to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("flotilla/users:0.1.0".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    api.create(&PostParams::default(), &pod).await?;
    let status = serde_json::json!({
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Probes the operator has made so far, from its metrics (`skipped` is not a probe).
async fn probes_made(addr: SocketAddr) -> Result<f64> {
    let text = metrics(addr).await?;
    let all = sum(&text, "flotilla_probes_total");
    let skipped = sum(&text, "flotilla_probes_total{result=\"skipped\"}");
    Ok(all - skipped)
}

/// The probed phase: failover-enabled MicroServices and their pods, probed until steady. Returns
/// the probe rate (per second, from the operator's metrics) and the rates of readiness
/// requests and scrapes the pods answered.
async fn probed(cluster: &Cluster, addr: SocketAddr) -> Result<(f64, f64, f64)> {
    let served = Arc::new(Served::default());
    let port = start_pod_server(served.clone()).await?;
    let own = kube::Client::try_from(kube::Config::new(cluster.url().parse()?))?;
    let services: Api<MicroService> = Api::namespaced(own.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(own, NS);
    for g in 0..PROBED_SERVICES {
        let name = format!("probed-{g}");
        let mut spec = MicroServiceSpec::with_image("flotilla/users:0.1.0");
        spec.port = i32::from(port);
        spec.failover.enabled = true;
        // Each service is the next one's fallback: every pod is probed once either way.
        spec.failover.fallback = Some(format!("probed-{}", (g + 1) % PROBED_SERVICES));
        spec.failover.scrape_metrics = true;
        spec.failover.max_error_rate = Some(0.2);
        services
            .create(&PostParams::default(), &MicroService::new(&name, spec))
            .await?;
        for k in 1..=PODS_PER_SERVICE {
            create_pod(
                &pods,
                &name,
                &format!("{name}-{k}"),
                &format!("127.4.{g}.{k}"),
            )
            .await?;
        }
    }
    let total = (PROBED_SERVICES * PODS_PER_SERVICE) as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    // Probing is steady once every pod has been probed a few times.
    while probes_made(addr).await? < 4.0 * total {
        if Instant::now() > deadline {
            bail!("the operator did not probe the {total} pods within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let (p0, r0, m0, t0) = (
        probes_made(addr).await?,
        served.readyz.load(Ordering::Relaxed),
        served.metrics.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(RATE_WINDOW).await;
    let (p1, r1, m1) = (
        probes_made(addr).await?,
        served.readyz.load(Ordering::Relaxed),
        served.metrics.load(Ordering::Relaxed),
    );
    let secs = t0.elapsed().as_secs_f64();
    Ok((
        (p1 - p0) / secs,
        (r1 - r0) as f64 / secs,
        (m1 - m0) as f64 / secs,
    ))
}

pub async fn rss(cluster: &Cluster, api: &Api<MicroService>, n: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("flotilla-operator"))
        .context("operator binary path")?;
    if !bin.is_file() {
        bail!(
            "{} is missing: cargo build --release -p flotilla-operator",
            bin.display()
        );
    }
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut child = tokio::process::Command::new(&bin)
        .args(["run", "--metrics-addr", &addr.to_string()])
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("operator pid")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("the operator binary never served metrics");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle, _) = rss_of(pid)?;
    println!("operator binary RSS idle:    {idle:.1} MiB");
    let t0 = Instant::now();
    create_all(api, n).await?;
    let converge = wait_converged(api, n, t0).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (loaded, peak) = rss_of(pid)?;
    println!(
        "operator binary RSS with {n} MicroServices and {} children: {loaded:.1} MiB (peak {peak:.1} MiB; converged in {:.2} s)",
        3 * n,
        converge.as_secs_f64()
    );
    let (rate, readyz, scrapes) = probed(cluster, addr).await?;
    let (with_probes, peak) = rss_of(pid)?;
    let _ = child.kill().await;
    println!(
        "operator binary RSS with {} failover-enabled pods being probed (and the above): {with_probes:.1} MiB (peak {peak:.1} MiB)",
        PROBED_SERVICES * PODS_PER_SERVICE
    );
    println!(
        "probe rate: {rate:.0} probes/s by the operator's metrics; the pods answered {readyz:.0} readiness requests/s and {scrapes:.0} scrapes/s"
    );
    Ok(())
}
