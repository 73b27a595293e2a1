//! `--rss`: the release operator binary as a child process, its resident memory idle, with N
//! MicroServices and their children, and with failover-enabled pods being probed.
//!
//! The probed pods have no kubelet behind them: the benchmark creates them through the API with
//! the labels the operator's pod template sets, a loopback pod IP (`127.4.g.k`) and the Ready
//! condition, and answers their probes (`/readyz`), readiness watches (`/readyz` with
//! `Flotilla-Watch`: the header echoed, then a chunked `ready` line at once and every heartbeat
//! for the kit's 30 s, as the services do) and scrapes (`/metrics`) itself on one port bound on
//! every local address, so every pod IP reaches it.

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
    /// Watch responses started, and their lines written.
    watches: AtomicU64,
    watch_lines: AtomicU64,
}

/// How long one watch response lasts, and the heartbeat range, as in the services' kit.
const WATCH_LIFETIME: Duration = Duration::from_secs(30);
const HEARTBEAT_RANGE: (u64, u64) = (50, 10_000);

/// The heartbeat of a `Flotilla-Watch: heartbeat=<ms>` request header value, clamped as the kit
/// does; `None` for a malformed value (answered as an ordinary probe) and `Some(0)` for none.
fn watch_heartbeat(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() {
        return Some(0);
    }
    let ms: u64 = value.strip_prefix("heartbeat=")?.trim().parse().ok()?;
    Some(if ms == 0 {
        0
    } else {
        ms.clamp(HEARTBEAT_RANGE.0, HEARTBEAT_RANGE.1)
    })
}

/// One watch response: the header echoed, a `ready` line at once and then every heartbeat
/// (changes only, so nothing more, when none was asked for), ended after [`WATCH_LIFETIME`].
async fn serve_watch(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    heartbeat: u64,
    served: &Served,
) -> Result<()> {
    served.watches.fetch_add(1, Ordering::Relaxed);
    let head = format!(
        "HTTP/1.1 200 OK\r\nflotilla-watch: heartbeat={heartbeat}\r\n\
         content-type: text/plain; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    write.write_all(head.as_bytes()).await?;
    const LINE: &[u8] = b"6\r\nready\n\r\n";
    let end = tokio::time::Instant::now() + WATCH_LIFETIME;
    loop {
        write.write_all(LINE).await?;
        served.watch_lines.fetch_add(1, Ordering::Relaxed);
        let next = if heartbeat == 0 {
            end
        } else {
            (tokio::time::Instant::now() + Duration::from_millis(heartbeat)).min(end)
        };
        tokio::time::sleep_until(next).await;
        if next >= end {
            break;
        }
    }
    write.write_all(b"0\r\n\r\n").await?;
    Ok(())
}

/// One keep-alive HTTP/1.1 connection: `/readyz` answers 200 (or a watch, with the watch
/// header), `/metrics` a small Prometheus text, anything else 404. Request bodies are not
/// expected (the prober sends GETs).
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
        let mut watch = None;
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
            if let Some((name, value)) = header.split_once(':') {
                if name.trim().eq_ignore_ascii_case("flotilla-watch") {
                    watch = watch_heartbeat(value);
                }
            }
        }
        if let (Some(heartbeat), "/readyz") = (watch, path.as_str()) {
            serve_watch(&mut write, heartbeat, &served).await?;
            if close {
                return Ok(());
            }
            continue;
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

/// Readiness watches the operator holds open, from its `flotilla_readiness_watches` gauge.
async fn watches_open(addr: SocketAddr) -> Result<f64> {
    Ok(sum(&metrics(addr).await?, "flotilla_readiness_watches "))
}

/// What the probed phase measured, per second over its window.
struct Probed {
    /// Probes, by the operator's metrics.
    probes: f64,
    /// Readiness requests, scrapes and watch lines the pods answered.
    readyz: f64,
    scrapes: f64,
    watch_lines: f64,
    /// Readiness watches open at the end, by the operator's gauge.
    watches: f64,
}

/// The probed phase: failover-enabled MicroServices and their pods, probed and watched until
/// steady.
async fn probed(cluster: &Cluster, addr: SocketAddr) -> Result<Probed> {
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
    // Steady once every pod has been probed a few times and is watched.
    while probes_made(addr).await? < 4.0 * total || watches_open(addr).await? < total {
        if Instant::now() > deadline {
            bail!(
                "within 120 s the operator did not probe and watch the {total} pods ({} watches open)",
                watches_open(addr).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let read = |s: &AtomicU64| s.load(Ordering::Relaxed);
    let (p0, r0, m0, w0, t0) = (
        probes_made(addr).await?,
        read(&served.readyz),
        read(&served.metrics),
        read(&served.watch_lines),
        Instant::now(),
    );
    tokio::time::sleep(RATE_WINDOW).await;
    let (p1, r1, m1, w1) = (
        probes_made(addr).await?,
        read(&served.readyz),
        read(&served.metrics),
        read(&served.watch_lines),
    );
    let secs = t0.elapsed().as_secs_f64();
    let watches = watches_open(addr).await?;
    if watches < total {
        bail!("only {watches} of the {total} pods are watched at the end of the window");
    }
    Ok(Probed {
        probes: (p1 - p0) / secs,
        readyz: (r1 - r0) as f64 / secs,
        scrapes: (m1 - m0) as f64 / secs,
        watch_lines: (w1 - w0) as f64 / secs,
        watches,
    })
}

/// `--rss`: the figures described in the module documentation. With `cold`, the N
/// MicroServices are created before the operator starts, and the time from its start to all
/// converged is printed instead of the idle figure.
pub async fn rss(cluster: &Cluster, api: &Api<MicroService>, n: usize, cold: bool) -> Result<()> {
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
    if cold {
        create_all(api, n).await?;
    }
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(&bin)
        .args(["run", "--metrics-addr", &addr.to_string()])
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("operator pid")?;
    let idle = if cold {
        None
    } else {
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
        Some(idle)
    };
    let t0 = if cold {
        t0
    } else {
        let t = Instant::now();
        create_all(api, n).await?;
        t
    };
    let converge = wait_converged(api, n, t0).await?;
    let reconciles = sum(&metrics(addr).await?, "flotilla_reconcile_total");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (loaded, peak) = rss_of(pid)?;
    println!(
        "operator binary RSS with {n} MicroServices and {} children: {loaded:.1} MiB (peak {peak:.1} MiB; converged in {:.2} s{}; {:.2} reconcile runs per MicroService)",
        3 * n,
        converge.as_secs_f64(),
        if cold { " from the operator's start" } else { "" },
        reconciles / n as f64
    );
    match idle {
        Some(idle) => println!(
            "memory per MicroService (with its 3 children) over idle: {:.1} KiB",
            (loaded - idle) * 1024.0 / n as f64
        ),
        None => println!(
            "memory per MicroService (with its 3 children), all of RSS: {:.1} KiB",
            loaded * 1024.0 / n as f64
        ),
    }
    let p = probed(cluster, addr).await?;
    let (with_probes, peak) = rss_of(pid)?;
    let _ = child.kill().await;
    println!(
        "operator binary RSS with {} failover-enabled pods probed and watched (and the above): {with_probes:.1} MiB (peak {peak:.1} MiB)",
        PROBED_SERVICES * PODS_PER_SERVICE
    );
    println!(
        "probe rate: {:.0} probes/s by the operator's metrics; the pods answered {:.0} readiness requests/s and {:.0} scrapes/s",
        p.probes, p.readyz, p.scrapes
    );
    println!(
        "readiness watches open (operator's gauge): {:.0}; watch lines sent: {:.0}/s",
        p.watches, p.watch_lines
    );
    Ok(())
}
