//! kubesim API server throughput: creates, merge-patch updates and server-side applies per
//! second over HTTP, and watch fan-out (events delivered per second with N watchers).
//!
//! The server runs on its own single-threaded runtime (one core); the load generator runs on
//! another thread. Run with `cargo bench -p kubesim --bench throughput`; `KUBESIM_BENCH_N`
//! sets the number of objects (default 20000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kubesim::{Cluster, ClusterConfig};
use serde_json::json;
use tokio::sync::Semaphore;

/// Requests in flight at once from the load generator.
const CONCURRENCY: usize = 32;

fn start_server() -> Result<(String, std::sync::mpsc::Sender<()>)> {
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = url_tx.send(Err(anyhow::anyhow!(e)));
                return;
            }
        };
        rt.block_on(async move {
            let cluster = match Cluster::start(ClusterConfig::default()).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = url_tx.send(Err(anyhow::anyhow!(e)));
                    return;
                }
            };
            let _ = url_tx.send(Ok(cluster.url().to_string()));
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            cluster.shutdown().await;
        });
    });
    let url = url_rx.recv().context("server thread")??;
    Ok((url, stop_tx))
}

async fn run_requests<F>(n: usize, make: F) -> Result<Duration>
where
    F: Fn(usize) -> reqwest::RequestBuilder,
{
    let sem = Arc::new(Semaphore::new(CONCURRENCY));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let req = make(i);
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await;
            drop(permit);
            match resp {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(anyhow::anyhow!("status {}", r.status())),
                Err(e) => Err(anyhow::anyhow!(e)),
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}

fn report(what: &str, n: usize, d: Duration) {
    println!(
        "{what:<44} {n:>7} in {:>7.3}s = {:>9.0} /s",
        d.as_secs_f64(),
        n as f64 / d.as_secs_f64()
    );
}

async fn bench() -> Result<()> {
    let n: usize = std::env::var("KUBESIM_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (url, stop) = start_server()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    let base = format!("{url}/api/v1/namespaces/default/configmaps");

    let d = run_requests(n, |i| {
        http.post(&base)
            .header("content-type", "application/json")
            .body(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}"), "labels": {"app": "bench"}}, "data": {"k": "v0"}}).to_string())
    })
    .await?;
    report("create (ConfigMap, POST)", n, d);

    let d = run_requests(n, |i| {
        http.patch(format!("{base}/cm-{i}"))
            .header("content-type", "application/merge-patch+json")
            .body(json!({"data": {"k": "v1"}}).to_string())
    })
    .await?;
    report("update (merge patch)", n, d);

    let d = run_requests(n, |i| {
        http.patch(format!("{base}/cm-{i}?fieldManager=bench&force=true"))
            .header("content-type", "application/apply-patch+yaml")
            .body(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")}, "data": {"k": "v2"}}).to_string())
    })
    .await?;
    report("server-side apply (changing)", n, d);

    let d = run_requests(n, |i| {
        http.patch(format!("{base}/cm-{i}?fieldManager=bench&force=true"))
            .header("content-type", "application/apply-patch+yaml")
            .body(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")}, "data": {"k": "v2"}}).to_string())
    })
    .await?;
    report("server-side apply (no-op)", n, d);

    let d = run_requests(n, |i| http.get(format!("{base}/cm-{i}"))).await?;
    report("get", n, d);

    for watchers in [1usize, 10, 50] {
        let events = (n / 4).max(100);
        let rv = {
            let list: serde_json::Value = http
                .get(format!("{base}?limit=1"))
                .send()
                .await?
                .json()
                .await?;
            list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("0")
                .to_string()
        };
        let mut handles = Vec::new();
        for _ in 0..watchers {
            let mut resp = http
                .get(format!("{url}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=600"))
                .send()
                .await?;
            handles.push(tokio::spawn(async move {
                let mut seen = 0usize;
                while seen < events {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => seen += chunk.iter().filter(|b| **b == b'\n').count(),
                        _ => break,
                    }
                }
                seen
            }));
        }
        let start = Instant::now();
        run_requests(events, |i| {
            http.patch(format!("{base}/cm-{}", i % n))
                .header("content-type", "application/merge-patch+json")
                .body(json!({"data": {"w": format!("{watchers}-{i}")}}).to_string())
        })
        .await?;
        let writes = start.elapsed();
        let mut delivered = 0;
        for h in handles {
            delivered += h.await?;
        }
        let total = start.elapsed();
        report(
            &format!("watch fan-out: writes with {watchers} watchers"),
            events,
            writes,
        );
        report(
            &format!("watch fan-out: events delivered to {watchers} watchers"),
            delivered,
            total,
        );
    }
    let _ = stop.send(());
    Ok(())
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(bench())
}
