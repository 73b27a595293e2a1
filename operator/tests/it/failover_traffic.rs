//! The engine's request figures over real HTTP: test pods on loopback addresses serve metrics
//! whose counters grow at a known rate, the inventory is fed by hand, and the figures are read
//! from the engine's desired state. No cluster involved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use flotilla_crds::TrafficStatus;
use flotilla_operator::failover::engine::{self, EngineConfig};
use flotilla_operator::failover::inventory::{Inventory, ObjKey};
use flotilla_operator::failover::metrics::Metrics;
use flotilla_operator::failover::outputs::Desired;
use flotilla_operator::failover::policy::Mode;
use flotilla_operator::failover::traffic::PublishPolicy;
use tokio::sync::watch;

use crate::failover_common::inventory::{self, wait_for};
use crate::failover_common::pods::{ip, start_group, FakePod};

/// A pod's exposition after `s` seconds of `rps` API requests a second, a quarter of them
/// failing, `slow` of every hundred taking between 5 and 100 ms and the others under 5 ms;
/// plus readiness probes, which the figures must not count.
fn metrics(s: u64, rps: u64, slow: u64) -> String {
    let n = s * rps;
    let (errors, late) = (n / 4, n * slow / 100);
    format!(
        "http_requests_total{{route=\"/users\",status=\"200\"}} {ok}\n\
         http_requests_total{{route=\"/users\",status=\"500\"}} {errors}\n\
         http_requests_total{{route=\"/readyz\",status=\"503\"}} {probes}\n\
         http_request_duration_seconds_bucket{{route=\"/users\",le=\"0.005\"}} {fast}\n\
         http_request_duration_seconds_bucket{{route=\"/users\",le=\"0.1\"}} {n}\n\
         http_request_duration_seconds_bucket{{route=\"/users\",le=\"+Inf\"}} {n}\n\
         http_request_duration_seconds_bucket{{route=\"/readyz\",le=\"+Inf\"}} {probes}\n",
        ok = n - errors,
        probes = s * 50,
        fast = n - late,
    )
}

/// Keeps each pod's metrics growing, every 100 ms: `(pod, rps, slow per hundred)`.
fn serve_metrics(pods: Vec<(Arc<FakePod>, u64, u64)>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            // Tenths of a second, as whole requests: rates in tens keep the counts exact.
            let tenths = start.elapsed().as_millis() as u64 / 100;
            for (p, rps, slow) in &pods {
                p.set_metrics(&metrics(tenths, rps / 10, *slow));
            }
        }
    })
}

/// The desired state once the figures' window has filled: a window and a publishing interval
/// after the first figures.
async fn settled(rx: &mut watch::Receiver<Arc<Desired>>) -> Result<Arc<Desired>> {
    // The time under test: the window filling with requests.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    Ok(rx.borrow_and_update().clone())
}

fn traffic(d: &Desired) -> Option<&TrafficStatus> {
    d.services.get(&ObjKey::new("t", "api"))?.traffic.as_ref()
}

/// A window of 3 s, scrapes every 300 ms and figures published every 500 ms, so a test sees
/// them settle in seconds.
fn config() -> EngineConfig {
    EngineConfig {
        traffic_window: Duration::from_secs(3),
        traffic_scrape_every: Duration::from_millis(300),
        traffic_publish: PublishPolicy {
            interval: Duration::from_millis(500),
            ..PublishPolicy::default()
        },
        ..EngineConfig::default()
    }
}

fn near(x: Option<f64>, want: f64, tolerance: f64) -> bool {
    x.is_some_and(|x| (x - want).abs() <= tolerance)
}

#[tokio::test]
async fn a_service_only_reporting_traffic_is_scraped_not_probed() -> Result<()> {
    // Three pods at 100, 100 and 200 requests a second, a quarter failing, 2 % of them slow:
    // the figures say 400 requests a second, an error ratio of 0.25 and a p99 of
    // 5 + 95 · (99 − 98) / 2 = 52.5 ms, counting none of the readiness requests; the pods are
    // scraped only (no readiness probe, no watch), and the service gets no failover report.
    let fakes: Vec<Arc<FakePod>> = start_group(3, 60, 3)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let rates = [100, 100, 200];
    let _metrics = serve_metrics(
        fakes
            .iter()
            .zip(rates)
            .map(|(p, r)| (p.clone(), r, 2))
            .collect(),
    );
    let mut svc = inventory::service("api", fakes[0].addr.port(), None);
    svc.report_traffic = true;
    svc.scrape_only = true;
    let pods = fakes
        .iter()
        .enumerate()
        .map(|(i, f)| inventory::pod("api", i, ip(f)));
    let (_tx, rx) = watch::channel(Arc::new(Inventory::from_parts([svc], pods)));
    let (mut out, _thread) = engine::spawn(rx, Metrics::new()?, config())?;
    wait_for(&mut out.desired, "the figures of three pods", |d| {
        traffic(d).is_some_and(|t| t.pods == Some(3) && t.p99_latency_millis.is_some())
    })
    .await?;
    let d = settled(&mut out.desired).await?;
    let t = traffic(&d).cloned().unwrap_or_default();
    eprintln!("figures: {t:?}");
    assert!(near(t.requests_per_second, 400.0, 60.0), "{t:?}");
    assert!(near(t.error_ratio, 0.25, 0.015), "{t:?}");
    // Published figures may lag the current ones by a tenth (see `traffic::moved`), and
    // counts are whole requests: the 2 % are 24 ± 1 of some 1,200 (about 2 ms either way).
    assert!(near(t.p99_latency_millis, 52.5, 8.0), "{t:?}");
    assert_eq!((t.window_seconds, t.canary.as_ref()), (Some(3), None));
    let want = &d.services[&ObjKey::new("t", "api")];
    assert!(!want.reports_failover && want.members.is_empty() && want.conditions.is_empty());
    assert_eq!(want.mode, Mode::Observe);
    for f in &fakes {
        assert_eq!((f.readiness_requests(), f.watch_requests()), (0, 0));
    }
    Ok(())
}

#[tokio::test]
async fn canary_and_stable_pods_have_figures_of_their_own() -> Result<()> {
    // A canary pod whose every request is slow beside two fast stable pods: the canary's p99 is
    // 5 + 95 · 0.99 = 99.05 ms, the stable pods' 4.95 ms, and the service's in between.
    let fakes: Vec<Arc<FakePod>> = start_group(3, 61, 3)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let slow = [0, 0, 100];
    let _metrics = serve_metrics(
        fakes
            .iter()
            .zip(slow)
            .map(|(p, s)| (p.clone(), 100, s))
            .collect(),
    );
    let mut svc = inventory::service("api", fakes[0].addr.port(), None);
    svc.report_traffic = true;
    svc.scrape_only = true;
    let pods = fakes.iter().enumerate().map(|(i, f)| {
        let mut p = inventory::pod("api", i, ip(f));
        p.canary = i == 2;
        p
    });
    let (_tx, rx) = watch::channel(Arc::new(Inventory::from_parts([svc], pods)));
    let (mut out, _thread) = engine::spawn(rx, Metrics::new()?, config())?;
    wait_for(&mut out.desired, "canary and stable figures", |d| {
        traffic(d).is_some_and(|t| {
            let p99 = |f: &Option<flotilla_crds::TrafficFigures>| {
                f.as_ref().and_then(|f| f.p99_latency_millis).is_some()
            };
            p99(&t.canary) && p99(&t.stable)
        })
    })
    .await?;
    let d = settled(&mut out.desired).await?;
    let t = traffic(&d).cloned().unwrap_or_default();
    eprintln!("figures: {t:?}");
    let (c, s) = (t.canary.unwrap_or_default(), t.stable.unwrap_or_default());
    assert!(near(c.p99_latency_millis, 99.05, 0.5), "{c:?}");
    assert!(near(s.p99_latency_millis, 4.95, 0.05), "{s:?}");
    assert_eq!((c.pods, s.pods), (Some(1), Some(2)));
    assert!(near(c.requests_per_second, 100.0, 15.0), "{c:?}");
    Ok(())
}
