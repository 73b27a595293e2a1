//! Request figures on a local cluster: kubesim runs real `users` processes as pods, a client
//! sends steady traffic through the Service's cluster IP, and `status.traffic` and the RPS,
//! ERRORS and P99-MS columns of `kubectl get msvc` (the API server's Table) are compared with
//! what the client saw.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use flotilla_crds::TrafficStatus;
use serde_json::Value;

use crate::failover_common::sim::*;

const NAME: &str = "shop";

/// How long after the faults the figures hold faulty requests only: the 30 s window, plus up
/// to 5 s of baseline kept before it (the pods' scrapes are thinned to one per 5 s) and up to
/// 5 s since a pod's last scrape, plus a second of computing.
const ALL_FAULTY_MS: i64 = 41_000;

/// The figures once `done` accepts them.
async fn figures(
    sim: &Sim,
    what: &str,
    done: impl Fn(&TrafficStatus) -> bool,
) -> Result<TrafficStatus> {
    sim.wait(what, || async {
        let ms = sim.msvcs().get(NAME).await?;
        Ok(ms.status.and_then(|s| s.traffic).filter(|t| done(t)))
    })
    .await
}

/// What the client saw over the figures' window: requests per second and the failed share.
fn client_view(
    traffic: &Traffic,
    base: (Instant, SystemTime),
    t: &TrafficStatus,
) -> Result<(f64, f64)> {
    let observed = t.observed_at.as_ref().context("observedAt")?;
    let window = f64::from(t.window_seconds.context("windowSeconds")?);
    // The wall-clock time of the figures, on the client's clock.
    let at_ms = observed.0.as_millisecond();
    let base_ms = i64::try_from(base.1.duration_since(SystemTime::UNIX_EPOCH)?.as_millis())?;
    let end = base.0 + Duration::from_millis(u64::try_from(at_ms - base_ms).unwrap_or(0));
    let start = end
        .checked_sub(Duration::from_secs_f64(window))
        .context("window")?;
    let seen: Vec<bool> = traffic
        .outcomes()
        .into_iter()
        .filter(|(at, _)| *at > start && *at <= end)
        .map(|(_, ok)| ok)
        .collect();
    if seen.is_empty() {
        bail!("the client sent nothing in the figures' window");
    }
    let failed = seen.iter().filter(|ok| !**ok).count() as f64;
    Ok((seen.len() as f64 / window, failed / seen.len() as f64))
}

/// The MicroService as `kubectl get msvc` shows it: the API server's Table, as column name →
/// cell.
async fn table_row(sim: &Sim) -> Result<Vec<(String, Value)>> {
    let url = format!(
        "/apis/flotilla.rs/v1alpha1/namespaces/{}/microservices/{NAME}",
        sim.ns
    );
    let req = http::Request::get(url)
        .header(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .body(Vec::new())?;
    let table: Value = serde_json::from_str(&sim.client.request_text(req).await?)?;
    let names = table["columnDefinitions"]
        .as_array()
        .context("columnDefinitions")?
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned());
    let cells = table["rows"][0]["cells"]
        .as_array()
        .context("one row")?
        .clone();
    Ok(names.zip(cells).collect())
}

fn cell(row: &[(String, Value)], name: &str) -> Option<f64> {
    row.iter().find(|(n, _)| n == name)?.1.as_f64()
}

#[tokio::test]
async fn figures_follow_the_traffic_a_client_sends() -> Result<()> {
    // A service without failover asks for its figures (`reportTraffic`): its pods are only
    // scraped. The requests per second match what the client sent through the Service; once
    // every pod answers half of the requests with 500 after 40 ms, the error ratio is about
    // one half, matching the client's failures, and the p99 latency is over 40 ms; the columns
    // show the same figures.
    let sim = Sim::start("traffic-figures").await?;
    sim.create_users(NAME, 3, |s| s.health.report_traffic = Some(true))
        .await?;
    let pods = sim.ready_pods(NAME, 3).await?;
    let base = (Instant::now(), SystemTime::now());
    let traffic = Traffic::start(sim.vip(NAME).await?, "/users", Duration::from_millis(50));
    let t = figures(&sim, "figures of the three pods", |t| {
        t.pods == Some(3) && t.requests_per_second.is_some_and(|r| r > 0.0)
    })
    .await?;
    let (rps, failed) = client_view(&traffic, base, &t)?;
    eprintln!("figures {t:?}; the client: {rps:.1} requests/s, {failed:.2} failed");
    let r = t.requests_per_second.unwrap_or_default();
    if (r - rps).abs() > 0.3 * rps || t.error_ratio.is_some_and(|e| e > 0.05) {
        sim.print_report().await;
        bail!("figures {t:?} do not match the client's {rps:.1} requests/s, {failed:.2} failed");
    }
    let faulted = SystemTime::now();
    for p in &pods {
        set_fault(p, r#"{"errorRate": 0.5, "latencyMs": 40}"#).await?;
    }
    let t = figures(&sim, "figures of the faulty pods", |t| {
        let after = t
            .observed_at
            .as_ref()
            .is_some_and(|at| at.0.as_millisecond() >= millis(faulted) + ALL_FAULTY_MS);
        after && t.error_ratio.is_some()
    })
    .await?;
    let (rps, failed) = client_view(&traffic, base, &t)?;
    eprintln!("figures {t:?}; the client: {rps:.1} requests/s, {failed:.2} failed");
    let ratio = t.error_ratio.unwrap_or_default();
    let p99 = t.p99_latency_millis.unwrap_or_default();
    if (ratio - 0.5).abs() > 0.15 || (ratio - failed).abs() > 0.1 || p99 < 40.0 {
        sim.print_report().await;
        bail!("figures {t:?} after the faults; the client saw {failed:.2} failed");
    }
    // Read twice around the table, in case new figures were written in between.
    sim.wait("the columns to show the status' figures", || async {
        let shown = |t: TrafficStatus| (t.requests_per_second, t.error_ratio, t.p99_latency_millis);
        let before = sim.msvcs().get(NAME).await?.status.and_then(|s| s.traffic);
        let row = table_row(&sim).await?;
        let after = sim.msvcs().get(NAME).await?.status.and_then(|s| s.traffic);
        let cells = (
            cell(&row, "RPS"),
            cell(&row, "Errors"),
            cell(&row, "P99-ms"),
        );
        eprintln!("kubectl get msvc: {row:?}");
        let same = before == after && before.map(shown) == Some(cells) && cells.2.is_some();
        Ok(same.then_some(()))
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}
