//! The readiness watch on real service processes (`users` over HTTP, `orders` over gRPC), with
//! the engine fed by hand: a pod that turns itself unready, a pod whose process is killed, a
//! pod whose process hangs and a pod answering its API calls with failures leave the traffic
//! with no probe due. `orders` is watched both ways: on Flotilla's HTTP watch, which it serves
//! on its gRPC port, and, with a readiness path that has no watch, on the standard
//! `Health/Watch`. Each service probes every minute here, so only the watch can move the
//! traffic within the test's bound; the failover benchmark times it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_crds::ActiveTarget;
use flotilla_operator::failover::engine::{self, EngineConfig, EngineOutputs, VerdictSigning};
use flotilla_operator::failover::inventory::{Inventory, ObjKey, PodInfo, ServiceInfo};
use flotilla_operator::failover::metrics::Metrics;
use flotilla_operator::failover::outputs::Desired;
use flotilla_operator::verdict_keys::VerdictKeys;
use flotilla_operator::write::Leadership;
use flotilla_testkit::paths::workspace_binary;
use flotilla_testkit::process::{http_ok, Builder, Process};
use flotilla_testkit::wait::poll;
use tokio::sync::watch;

use crate::failover_common::inventory::{self, pod};
use crate::failover_common::pods::{ip, start_group, FakePod};
use crate::failover_common::sim::{ADMIN_TOKEN, PUBLIC_KEYS};

/// Far under the services' one-minute probe period.
const WAIT: Duration = Duration::from_secs(20);
const PERIOD: Duration = Duration::from_secs(60);

/// Which sample service runs the primary pod.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `users`, on the HTTP watch.
    Http,
    /// `orders`, on Flotilla's HTTP watch (the call counts ride on its lines).
    Grpc,
    /// `orders` with a readiness path that does not watch: on `grpc.health.v1.Health/Watch`.
    GrpcHealthWatch,
}

impl Kind {
    fn grpc(self) -> bool {
        !matches!(self, Kind::Http)
    }
}

/// A path `orders` answers 404 on: the HTTP watch is refused there, so the gRPC one is used.
const NO_WATCH_PATH: &str = "/no-watch-here";

/// What happens to the primary pod.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Its own readiness fails (`/admin/faults`).
    Unready,
    /// Its process is SIGKILLed.
    Killed,
    /// Its process is SIGSTOPped: it hangs, closing nothing and saying nothing.
    Stopped,
    /// Its readiness stays fine while every API request is answered 500 (`errorRate` 1.0).
    BadAnswers,
}

async fn start_pod(kind: Kind, dir: &std::path::Path) -> Result<Process> {
    let (name, package) = match kind {
        Kind::Http => ("users", "users"),
        Kind::Grpc | Kind::GrpcHealthWatch => ("orders", "orders"),
    };
    Builder::new(name, workspace_binary(name, package)?)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .listen_env("LISTEN_ADDR")
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("JWT_PUBLIC_KEYS", PUBLIC_KEYS)
        .ready(http_ok("/readyz"))
        .start()
        .await
}

/// A service probed every [`PERIOD`], over gRPC when `grpc`.
fn service(name: &str, port: u16, grpc: bool, fallback: Option<&str>) -> ServiceInfo {
    let mut svc = inventory::service(name, port, fallback);
    svc.probe.period = PERIOD;
    svc.probe.grpc = grpc.then(String::new);
    svc.failover.scrape_metrics = true;
    svc.failover.max_error_rate = Some(0.5);
    svc
}

/// `web` (one pod at `addr`, failover to `backup`) and `backup` (the fake pods).
fn inventory(kind: Kind, addr: SocketAddr, backup: &[FakePod]) -> Inventory {
    let mut fallback = service("backup", backup[0].addr.port(), false, None);
    fallback.failover_enabled = false;
    let mut web = service("web", addr.port(), kind.grpc(), Some("backup"));
    if matches!(kind, Kind::GrpcHealthWatch) {
        web.probe.readiness_path = NO_WATCH_PATH.to_owned();
    }
    Inventory::from_parts(
        [web, fallback],
        std::iter::once(pod("web", 0, addr.ip())).chain(
            backup
                .iter()
                .enumerate()
                .map(|(i, f)| pod("backup", i, ip(f))),
        ),
    )
}

fn active(d: &Desired) -> Option<ActiveTarget> {
    d.services.get(&ObjKey::new("t", "web"))?.status.active
}

/// The engine's desired state once `pred` holds, `within` a bound ([`WAIT`]: far under the
/// probe period, so only the readiness watch can have brought it).
async fn wait_for(
    out: &mut EngineOutputs,
    what: &str,
    within: Duration,
    pred: impl Fn(&Desired) -> bool,
) -> Result<()> {
    let what = format!("{what} (only the watch can be that quick)");
    inventory::wait_for_within(&mut out.desired, &what, within, pred).await?;
    Ok(())
}

async fn fault_moves_traffic(kind: Kind, fault: Fault, octet: u8) -> Result<()> {
    // Short heartbeats (the period here is a minute, to keep probes away).
    fault_moves_traffic_tuned(kind, fault, octet, Duration::from_millis(100), WAIT).await?;
    Ok(())
}

/// [`fault_moves_traffic`] with the heartbeat the watch asks for, and the bound of the
/// failover after the fault; the engine's metrics for further checks.
async fn fault_moves_traffic_tuned(
    kind: Kind,
    fault: Fault,
    octet: u8,
    heartbeat: Duration,
    within: Duration,
) -> Result<Metrics> {
    let dir = tempfile::tempdir()?;
    let process = start_pod(kind, dir.path()).await?;
    let backup = start_group(3, octet, 2).await?;
    let (_tx, rx) = watch::channel(Arc::new(inventory(kind, process.addr(), &backup)));
    let metrics = Metrics::new()?;
    let cfg = EngineConfig {
        watch_heartbeat: Some(heartbeat),
        ..EngineConfig::default()
    };
    let (mut out, _thread) = engine::spawn(rx, metrics.clone(), cfg)?;
    wait_for(&mut out, "the primary decided active", WAIT, |d| {
        active(d) == Some(ActiveTarget::Primary)
    })
    .await?;
    // The watch opens when the engine first sees the pod (Ready): wait until the pod took it.
    poll("the pod's readiness watch open", WAIT, || async {
        Ok((metrics.readiness_watches.get() == 1).then_some(()))
    })
    .await?;
    // API traffic, one request at a time: answered 401 (no token) until a fault makes it 500.
    let traffic = if kind.grpc() {
        tokio::spawn(grpc_traffic(process.addr()))
    } else {
        tokio::spawn(api_traffic(process.addr()))
    };
    match fault {
        Fault::Unready | Fault::BadAnswers => {
            let json = if matches!(fault, Fault::Unready) {
                r#"{"unhealthy": true}"#
            } else {
                r#"{"errorRate": 1.0}"#
            };
            let status = crate::failover_common::sim::http(
                process.addr(),
                "POST",
                "/admin/faults",
                Some(json),
            )
            .await?;
            anyhow::ensure!(status == 200, "faults: {status}");
        }
        Fault::Killed | Fault::Stopped => {
            let pid = process.id().context("the pod's process id")?;
            let signal = if matches!(fault, Fault::Killed) {
                "-KILL"
            } else {
                "-STOP"
            };
            let sent = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()?;
            anyhow::ensure!(sent.success(), "kill {signal} failed");
        }
    }
    wait_for(&mut out, "failover to the fallback", within, |d| {
        active(d) == Some(ActiveTarget::Fallback)
    })
    .await
    .with_context(|| format!("pod log:\n{}", process.log()))?;
    traffic.abort();
    if matches!(fault, Fault::BadAnswers) {
        let judged = metrics
            .watch_reports
            .with_label_values(&["error_rate"])
            .get();
        anyhow::ensure!(judged >= 1, "judged by the watch's counts, not a scrape");
    }
    if matches!(fault, Fault::Stopped) {
        // Heartbeats are the HTTP watch's: `Health/Watch` has none, its PINGs find the hang.
        let late = metrics.watch_reports.with_label_values(&["late"]).get();
        if matches!(kind, Kind::GrpcHealthWatch) {
            anyhow::ensure!(
                late == 0,
                "watched on Health/Watch, which has no heartbeat lines"
            );
        } else {
            anyhow::ensure!(
                late >= 1,
                "the late heartbeat had the pod probed at once (the second failure)"
            );
        }
    }
    if matches!(fault, Fault::Stopped) {
        // Let it run again so it can be stopped the usual way.
        if let Some(pid) = process.id() {
            std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status()?;
        }
    }
    Ok(metrics)
}

/// Sends `GET /users/<id>` to `addr` without a token, one request at a time, until aborted.
async fn api_traffic(addr: SocketAddr) {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/users/u-1");
    loop {
        if client.get(&url).send().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Calls `GetOrder` on `addr` without a token, one call at a time, until aborted: answered
/// `UNAUTHENTICATED` (a caller's mistake) until a fault makes it `INTERNAL` (a failure).
async fn grpc_traffic(addr: SocketAddr) {
    let Ok(endpoint) = tonic::transport::Channel::from_shared(format!("http://{addr}")) else {
        return;
    };
    let mut client = orders::pb::orders_client::OrdersClient::new(endpoint.connect_lazy());
    loop {
        let request = orders::pb::GetOrderRequest { id: 1 };
        if let Err(status) = client.get_order(request).await {
            if status.code() == tonic::Code::Unavailable {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test]
async fn an_http_pod_answering_500s_is_out_without_a_scrape() -> Result<()> {
    // `users` counts its API answers on every heartbeat line of its watch; two heartbeats of
    // 500s, each over the floor of requests, eject it without a scrape or a probe.
    fault_moves_traffic(Kind::Http, Fault::BadAnswers, 47).await
}

#[tokio::test]
async fn an_http_pod_answering_500s_is_out_before_its_next_heartbeat() -> Result<()> {
    // Asked for a minute's heartbeat (the pod keeps 10 s, its longest), the watch has only the
    // pod's early lines to go by: the first failed request, then each stretch of failed ones.
    let heartbeat = Duration::from_secs(60);
    let within = Duration::from_secs(8);
    fault_moves_traffic_tuned(Kind::Http, Fault::BadAnswers, 48, heartbeat, within).await?;
    Ok(())
}

#[tokio::test]
async fn a_grpc_pod_failing_its_calls_is_out_before_its_next_heartbeat() -> Result<()> {
    // The same for `orders`, whose HTTP watch counts its failing gRPC calls.
    let heartbeat = Duration::from_secs(60);
    let within = Duration::from_secs(8);
    fault_moves_traffic_tuned(Kind::Grpc, Fault::BadAnswers, 54, heartbeat, within).await?;
    Ok(())
}

#[tokio::test]
async fn an_http_pod_that_turns_unready_is_out_without_a_probe() -> Result<()> {
    // `users` says `not_ready` on its open `/readyz` watch the moment a fault marks it so.
    fault_moves_traffic(Kind::Http, Fault::Unready, 40).await
}

#[tokio::test]
async fn an_http_pod_whose_process_dies_is_out_without_a_probe() -> Result<()> {
    // The kernel closes the killed process's sockets: the watch connection ends mid-response,
    // the reconnect is refused, two failures at once.
    fault_moves_traffic(Kind::Http, Fault::Killed, 41).await
}

#[tokio::test]
async fn an_http_pod_that_hangs_is_out_without_a_probe() -> Result<()> {
    // A stopped process still accepts connections into its backlog but sends nothing: its
    // watch misses the heartbeats it asked for, one silent timeout and one silent heartbeat.
    fault_moves_traffic(Kind::Http, Fault::Stopped, 44).await
}

#[tokio::test]
async fn a_hung_pods_late_probe_and_its_watch_silence_are_its_two_failures() -> Result<()> {
    // At the shipped heartbeat (250 ms) and timeout (300 ms) the late heartbeat's probe, which
    // waits at most a heartbeat, times out (about 525 ms after the last line) just before the
    // watch's silence (550 ms). That timeout must leave a watch with heartbeats open: closed,
    // its silence would be lost and the second failure would wait for another probe's timeout.
    let heartbeat = Duration::from_millis(250);
    let metrics =
        fault_moves_traffic_tuned(Kind::Http, Fault::Stopped, 55, heartbeat, WAIT).await?;
    let silent = metrics.watch_reports.with_label_values(&["silent"]).get();
    anyhow::ensure!(
        silent >= 1,
        "the watch's silence counted beside the late probe's timeout"
    );
    let late = metrics.watch_reports.with_label_values(&["late"]).get();
    anyhow::ensure!(late >= 1, "the late heartbeat had the pod probed at once");
    Ok(())
}

#[tokio::test]
async fn a_grpc_pod_that_hangs_is_out_without_a_probe() -> Result<()> {
    // `orders` serves Flotilla's watch on its gRPC port: a stopped process misses its
    // heartbeats, and the late one has it probed (`Health/Check`) at once.
    fault_moves_traffic(Kind::Grpc, Fault::Stopped, 52).await
}

#[tokio::test]
async fn a_grpc_pod_that_turns_unready_is_out_without_a_probe() -> Result<()> {
    // `orders` says `not_ready` on its HTTP watch the moment a fault marks it so.
    fault_moves_traffic(Kind::Grpc, Fault::Unready, 53).await
}

#[tokio::test]
async fn a_grpc_pod_whose_process_dies_is_out_without_a_probe() -> Result<()> {
    // The watch connection ends mid-response; the reconnect is refused.
    fault_moves_traffic(Kind::Grpc, Fault::Killed, 50).await
}

#[tokio::test]
async fn a_grpc_pod_failing_its_calls_is_out_without_a_scrape() -> Result<()> {
    // `orders` counts its calls, INTERNAL and the other failing codes as errors, on every
    // heartbeat line of its HTTP watch: judged as an HTTP pod's 500s are, without a scrape.
    fault_moves_traffic(Kind::Grpc, Fault::BadAnswers, 51).await
}

#[tokio::test]
async fn a_grpc_pod_on_health_watch_that_hangs_is_out_without_a_probe() -> Result<()> {
    // A stopped process leaves the HTTP/2 PINGs on its `Health/Watch` connection unanswered:
    // one silent timeout, then a reconnect unanswered for a heartbeat.
    fault_moves_traffic(Kind::GrpcHealthWatch, Fault::Stopped, 46).await
}

#[tokio::test]
async fn a_grpc_pod_on_health_watch_that_turns_unready_is_out_without_a_probe() -> Result<()> {
    // `orders` sends NOT_SERVING on its `Health/Watch` stream.
    fault_moves_traffic(Kind::GrpcHealthWatch, Fault::Unready, 42).await
}

#[tokio::test]
async fn a_grpc_pod_on_health_watch_whose_process_dies_is_out_without_a_probe() -> Result<()> {
    // The HTTP/2 connection carrying the Watch stream breaks; the reconnect is refused.
    fault_moves_traffic(Kind::GrpcHealthWatch, Fault::Killed, 43).await
}

/// Two test pods `127.3.<b>.*` that serve readiness watches.
async fn watched_group(b: u8) -> Result<Vec<FakePod>> {
    let fakes = start_group(3, b, 2).await?;
    for f in &fakes {
        f.set_watch(true);
    }
    Ok(fakes)
}

/// Waits until the engine takes pod `api-0` out of service `api`'s traffic.
async fn api_0_ejected(out: &mut EngineOutputs) -> Result<()> {
    let key = ObjKey::new("t", "api");
    tokio::time::timeout(
        WAIT,
        out.desired.wait_for(|d| {
            d.services.get(&key).is_some_and(|s| {
                s.members.iter().any(|m| {
                    m.pod.name == "api-0"
                        && m.to == flotilla_operator::failover::decide::Membership::Out
                })
            })
        }),
    )
    .await
    .context("api-0 ejected")??;
    Ok(())
}

#[tokio::test]
async fn a_steady_watched_pod_is_probed_only_for_its_verdict() -> Result<()> {
    // Two pods that serve watches with heartbeats, on a 200 ms period: while steady they are
    // judged by their watches and probed only every 2 s (to repeat the verdict), not every
    // period; a pod that turns 503 is seen on its watch and ejected. Elapsed time is the
    // behaviour under test here: the probe count over a few seconds.
    let fakes = watched_group(45).await?;
    let mut svc = service("api", fakes[0].addr.port(), false, Some("backup"));
    svc.probe.period = Duration::from_millis(200);
    let pods: Vec<PodInfo> = fakes
        .iter()
        .enumerate()
        .map(|(i, f)| pod("api", i, ip(f)))
        .collect();
    let (_tx, rx) = watch::channel(Arc::new(Inventory::from_parts([svc], pods)));
    let metrics = Metrics::new()?;
    let (mut out, _thread) = engine::spawn(rx, metrics.clone(), EngineConfig::default())?;
    poll("both watches open", WAIT, || async {
        Ok((metrics.readiness_watches.get() == 2).then_some(()))
    })
    .await?;
    // Until a pod has passed `successThreshold` probes it is probed every period: the window
    // starts once the engine reports both pods healthy.
    let key = ObjKey::new("t", "api");
    tokio::time::timeout(
        WAIT,
        out.desired.wait_for(|d| {
            d.services.get(&key).is_some_and(|s| {
                s.status.pods.len() == 2 && s.status.pods.iter().all(|p| p.healthy)
            })
        }),
    )
    .await
    .context("both pods healthy")??;
    // The first verdicts of the healthy pods go out with the next probe of each: the window
    // starts after that.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Probes that fail (a timeout on a loaded machine) are confirmed at once and have the
    // service's other pods probed too: at most two more probes of this pod each.
    let failed = || {
        ["timeout", "connect_error", "bad_status"]
            .iter()
            .map(|r| metrics.probes.with_label_values(&[r]).get())
            .sum::<u64>()
    };
    let failed_before = failed();
    let late_before = metrics.watch_reports.with_label_values(&["late"]).get();
    let before = fakes[1].readiness_requests();
    let watches_before = fakes[1].watch_requests();
    let watching = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let periods = watching.elapsed().as_millis() / 200;
    let probed = fakes[1].readiness_requests() - before;
    let reopened = fakes[1].watch_requests() - watches_before;
    let failures = failed() - failed_before;
    // A heartbeat late on a loaded machine has the pod probed at once: one more probe each.
    let late = metrics.watch_reports.with_label_values(&["late"]).get() - late_before;
    assert!(
        probed <= 4 + 2 * failures + late,
        "{probed} readiness probes in {periods} periods ({failures} probes failed, {late} \
         heartbeats late, {reopened} watches reopened): steady watched pods are probed every 2 s"
    );
    // A watch lives 30 s; one reopened early (a heartbeat late on a loaded machine) is allowed,
    // a watch reopened every period is not.
    assert!(
        reopened <= 1,
        "{reopened} readiness watches reopened in {periods} periods"
    );
    fakes[0].set_status(503);
    api_0_ejected(&mut out).await?;
    Ok(())
}

#[tokio::test]
async fn an_ejected_pod_hears_its_verdict_at_once() -> Result<()> {
    // Pods on a ten-minute period, so no periodic probe comes within the test: the primary
    // pod that says `not_ready` on its watch is ejected, and the engine sends it a probe
    // carrying `ejected` at once (a pod closes its clients' kept connections only when it
    // hears it), while its healthy sibling, still serving, hears nothing new.
    let fakes = watched_group(48).await?;
    let backup = start_group(3, 49, 2).await?;
    let mut svc = service("api", fakes[0].addr.port(), false, Some("backup"));
    svc.probe.period = Duration::from_secs(600);
    let mut back = service("backup", backup[0].addr.port(), false, None);
    back.probe.period = Duration::from_secs(600);
    let pods = fakes
        .iter()
        .enumerate()
        .map(|(i, f)| pod("api", i, ip(f)))
        .chain(
            backup
                .iter()
                .enumerate()
                .map(|(i, f)| pod("backup", i, ip(f))),
        );
    let (_tx, rx) = watch::channel(Arc::new(Inventory::from_parts([svc, back], pods)));
    let metrics = Metrics::new()?;
    // Heartbeats as at the default period (the fakes show a change at their next one).
    // Verdicts go out signed, by a leader only.
    let (lead, leadership) = Leadership::new();
    lead.lead_unbounded();
    let keys = Arc::new(VerdictKeys::ephemeral());
    let cfg = EngineConfig {
        watch_heartbeat: Some(Duration::from_millis(100)),
        verdicts: Some(VerdictSigning { keys, leadership }),
        ..EngineConfig::default()
    };
    let (mut out, _thread) = engine::spawn(rx, metrics.clone(), cfg)?;
    poll("the primary pods' watches open", WAIT, || async {
        Ok((metrics.readiness_watches.get() >= 2).then_some(()))
    })
    .await?;
    wait_for(&mut out, "the primary decided active", WAIT, |d| {
        d.services
            .get(&ObjKey::new("t", "api"))
            .and_then(|s| s.status.active)
            == Some(ActiveTarget::Primary)
    })
    .await?;
    fakes[0].set_status(503);
    api_0_ejected(&mut out).await?;
    poll("the failing pod told `ejected`", WAIT, || async {
        Ok((fakes[0].verdict().as_deref() == Some(flotilla_crds::traffic::EJECTED)).then_some(()))
    })
    .await?;
    assert_ne!(
        fakes[1].verdict().as_deref(),
        Some(flotilla_crds::traffic::EJECTED),
        "the healthy sibling is not ejected"
    );
    Ok(())
}
