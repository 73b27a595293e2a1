//! Prober + decider over real HTTP: test pods on loopback addresses, an inventory fed by hand,
//! decisions read from the engine's outputs. No cluster involved.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_crds::traffic::{EJECTED, SERVING};
use flotilla_crds::ActiveTarget;
use flotilla_kit::server::{DrainOptions, Running};
use flotilla_kit::verdict::VerdictCheck;
use flotilla_kit::{Health, Kit};
use flotilla_operator::failover::decide::Membership;
use flotilla_operator::failover::engine::{self, EngineConfig, EngineOutputs, VerdictSigning};
use flotilla_operator::failover::inventory::{Inventory, ObjKey, PodInfo, ServiceInfo};
use flotilla_operator::failover::metrics::Metrics;
use flotilla_operator::failover::outputs::{Desired, Notice};
use flotilla_operator::failover::policy::FailoverPolicy;
use flotilla_operator::verdict_keys::VerdictKeys;
use flotilla_operator::write::Leadership;
use flotilla_testkit::wait::poll;
use tokio::sync::watch;
use warp::Filter as _;

use crate::failover_common::inventory::{self, wait_for};
use crate::failover_common::pods::{ip, start_group, FakePod};

const WAIT: Duration = Duration::from_secs(30);

fn service(
    name: &str,
    port: u16,
    fallback: Option<&str>,
    tweak: impl FnOnce(&mut FailoverPolicy),
) -> ServiceInfo {
    let mut svc = inventory::service(name, port, fallback);
    svc.probe.period = Duration::from_millis(200);
    tweak(&mut svc.failover);
    svc
}

fn pods(svc: &str, fakes: &[FakePod]) -> Vec<PodInfo> {
    fakes
        .iter()
        .enumerate()
        .map(|(i, f)| inventory::pod(svc, i, ip(f)))
        .collect()
}

/// A failover-enabled `primary` service falling back to `fallback` (failover off), with the
/// pods of both.
fn with_fallback(
    (primary, primary_pods): (&str, &[FakePod]),
    (fallback, fallback_pods): (&str, &[FakePod]),
) -> Inventory {
    let mut backup = service(fallback, fallback_pods[0].addr.port(), None, |_| {});
    backup.failover_enabled = false;
    Inventory::from_parts(
        [
            service(primary, primary_pods[0].addr.port(), Some(fallback), |_| {}),
            backup,
        ],
        pods(primary, primary_pods)
            .into_iter()
            .chain(pods(fallback, fallback_pods)),
    )
}

fn member(d: &Desired, svc: &str, pod: &str) -> Option<Membership> {
    d.services
        .get(&ObjKey::new("t", svc))?
        .members
        .iter()
        .find(|m| m.pod.name == pod)
        .map(|m| m.to)
}

fn start(inv: Inventory) -> (watch::Sender<Arc<Inventory>>, EngineOutputs, Metrics) {
    let (tx, rx) = watch::channel(Arc::new(inv));
    let metrics = Metrics::new().expect("metrics");
    let (out, _thread) =
        engine::spawn(rx, metrics.clone(), EngineConfig::default()).expect("engine");
    (tx, out, metrics)
}

#[tokio::test]
async fn failing_pod_is_ejected_and_returns_after_recovering() -> Result<()> {
    // A pod whose readiness endpoint answers 503 leaves the membership; once it answers 200 for
    // successThreshold probes it returns, and both moves are announced.
    let fakes = start_group(3, 1, 2).await?;
    let port = fakes[0].addr.port();
    let inv = Inventory::from_parts(
        [service("web", port, Some("backup"), |_| {})],
        pods("web", &fakes),
    );
    let (_tx, mut out, metrics) = start(inv);
    wait_for(&mut out.desired, "both pods healthy", |d| {
        d.services
            .values()
            .any(|s| s.status.healthy_pods == Some(2))
    })
    .await?;
    fakes[1].set_status(503);
    let d = wait_for(&mut out.desired, "web-1 ejected", |d| {
        member(d, "web", "web-1") == Some(Membership::Out)
    })
    .await?;
    assert_eq!(member(&d, "web", "web-0"), Some(Membership::In));
    let svc = &d.services[&ObjKey::new("t", "web")];
    let ev = svc
        .status
        .pods
        .iter()
        .find(|p| p.name == "web-1")
        .context("evidence")?;
    assert!(!ev.healthy);
    assert_eq!(ev.last_probe.as_deref(), Some("http 503"));
    fakes[1].set_status(200);
    wait_for(&mut out.desired, "web-1 back", |d| {
        member(d, "web", "web-1") == Some(Membership::In)
    })
    .await?;
    // Notices follow the desired state they belong to; collect them as they arrive.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(WAIT, out.notices.recv()).await {
            Ok(Some(Notice::Pod {
                pod, to, evidence, ..
            })) => seen.push((pod.name, to, evidence)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    while let Ok(n) = out.notices.try_recv() {
        if let Notice::Pod {
            pod, to, evidence, ..
        } = n
        {
            seen.push((pod.name, to, evidence));
        }
    }
    assert_eq!(seen.len(), 2, "one ejection and one return: {seen:?}");
    assert_eq!(seen[0].1, Membership::Out);
    assert_eq!(seen[0].2, "http 503");
    assert!(metrics.probes.with_label_values(&["bad_status"]).get() >= 2);
    Ok(())
}

#[tokio::test]
async fn a_hanging_pod_times_out_and_probes_stay_bounded() -> Result<()> {
    // A pod that never answers within the timeout is ejected, and probing keeps one connection
    // per healthy pod instead of one per probe.
    let fakes = start_group(3, 2, 2).await?;
    let port = fakes[0].addr.port();
    let inv = Inventory::from_parts(
        [service("api", port, Some("backup"), |_| {})],
        pods("api", &fakes),
    );
    let (_tx, mut out, metrics) = start(inv);
    fakes[0].set_delay(Duration::from_secs(5));
    let d = wait_for(&mut out.desired, "api-0 ejected", |d| {
        member(d, "api", "api-0") == Some(Membership::Out)
    })
    .await?;
    let ev = &d.services[&ObjKey::new("t", "api")].status.pods[0];
    assert_eq!(ev.last_probe.as_deref(), Some("timeout"));
    assert!(metrics.probes.with_label_values(&["timeout"]).get() >= 2);
    // Let the healthy pod be probed many times, then check connection reuse.
    poll("api-1 probed 15 times", WAIT, || async {
        let n = fakes[1].readiness_requests();
        if n < 15 {
            bail!("api-1 was probed only {n} times");
        }
        Ok(Some(()))
    })
    .await?;
    assert!(
        fakes[1].connections() <= 2,
        "{} probes used {} connections",
        fakes[1].readiness_requests(),
        fakes[1].connections()
    );
    Ok(())
}

#[tokio::test]
async fn all_primary_pods_failing_moves_traffic_to_healthy_fallback_pods() -> Result<()> {
    // With every primary pod failing and a healthy fallback, the fallback's healthy pods get the
    // primary's membership and the status says fallback.
    let primary = start_group(3, 3, 2).await?;
    let fallback = start_group(3, 4, 2).await?;
    let inv = with_fallback(("users", &primary), ("users-backup", &fallback));
    let (_tx, mut out, _metrics) = start(inv);
    wait_for(&mut out.desired, "primary healthy", |d| {
        d.services
            .values()
            .any(|s| s.status.healthy_pods == Some(2))
    })
    .await?;
    fallback[1].set_status(500);
    for p in &primary {
        p.set_status(503);
    }
    let d = wait_for(&mut out.desired, "failover", |d| {
        d.services
            .values()
            .any(|s| s.status.active == Some(ActiveTarget::Fallback))
    })
    .await?;
    let d = wait_for(&mut out.desired, "fallback membership settled", |d| {
        member(d, "users", "users-backup-1") == Some(Membership::Out)
    })
    .await
    .unwrap_or(d);
    assert_eq!(member(&d, "users", "users-0"), Some(Membership::Out));
    assert_eq!(member(&d, "users", "users-1"), Some(Membership::Out));
    assert_eq!(member(&d, "users", "users-backup-0"), Some(Membership::In));
    assert_eq!(member(&d, "users", "users-backup-1"), Some(Membership::Out));
    // Notices follow the desired state they belong to: wait for the service's notice.
    let mut failed_over = false;
    while !failed_over {
        match tokio::time::timeout(WAIT, out.notices.recv()).await {
            Ok(Some(n)) => failed_over = matches!(n, Notice::Service { .. }),
            Ok(None) | Err(_) => break,
        }
    }
    assert!(failed_over, "a failover notice was sent");
    Ok(())
}

#[tokio::test]
async fn a_first_failure_has_the_whole_service_probed_at_once() -> Result<()> {
    // Six pods on a 10 s period, all failing from the start (the kubelet called them Ready, so
    // they start healthy). The first pod's first failed probe has the other five probed at
    // once, so the service fails over a fraction of a second later instead of when the last
    // pod's own turn comes. Without that, all six pods being probed within one second of the
    // first would happen by chance about once in 10^5 runs.
    let primary = start_group(3, 7, 6).await?;
    let fallback = start_group(3, 8, 1).await?;
    let mut inv = with_fallback(("web", &primary), ("web-backup", &fallback));
    let web = inv.services.get_mut(&ObjKey::new("t", "web"));
    web.context("the web service")?.probe.period = Duration::from_secs(10);
    for p in &primary {
        p.set_status(503);
    }
    let (_tx, mut out, _metrics) = start(inv);
    let probed = || {
        primary
            .iter()
            .filter(|p| p.readiness_requests() > 0)
            .count()
    };
    // Elapsed time is what this test checks (every pod within 1 s of the first probe), so both
    // loops look every 5 ms: `poll`'s 100 ms would move the start of the window by as much.
    let deadline = tokio::time::Instant::now() + WAIT;
    while probed() == 0 {
        if tokio::time::Instant::now() > deadline {
            bail!("no pod was probed");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = tokio::time::Instant::now();
    while probed() < primary.len() && first.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        probed(),
        primary.len(),
        "every pod probed within 1 s of the first failure"
    );
    wait_for(&mut out.desired, "failover", |d| {
        d.services
            .values()
            .any(|s| s.status.active == Some(ActiveTarget::Fallback))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_noisy_pod_never_leaves() -> Result<()> {
    // A pod that fails every other probe never reaches two failures in a row and keeps traffic.
    let fakes = start_group(3, 5, 1).await?;
    let inv = Inventory::from_parts(
        [service(
            "noisy",
            fakes[0].addr.port(),
            Some("backup"),
            |_| {},
        )],
        pods("noisy", &fakes),
    );
    let (_tx, mut out, metrics) = start(inv);
    fakes[0].set_noisy(true);
    poll("10 failed probes", WAIT, || {
        let d = out.desired.borrow_and_update().clone();
        assert_ne!(member(&d, "noisy", "noisy-0"), Some(Membership::Out));
        let failed = metrics.probes.with_label_values(&["bad_status"]).get();
        std::future::ready(Ok((failed >= 10).then_some(())))
    })
    .await?;
    let ejected =
        std::iter::from_fn(|| out.notices.try_recv().ok()).any(|n| matches!(n, Notice::Pod { .. }));
    assert!(!ejected);
    Ok(())
}

#[tokio::test]
async fn a_high_5xx_ratio_ejects_a_pod_whose_readiness_is_fine() -> Result<()> {
    // With scrapeMetrics and maxErrorRate, a pod serving mostly 5xx is ejected even though its
    // readiness endpoint says 200; a pod without traffic is not.
    let fakes = start_group(3, 6, 2).await?;
    let svc = service("err", fakes[0].addr.port(), Some("backup"), |f| {
        f.scrape_metrics = true;
        f.max_error_rate = Some(0.1);
    });
    let inv = Inventory::from_parts([svc], pods("err", &fakes));
    let (_tx, mut out, _m) = start(inv);
    fakes[0].set_metrics(
        "http_requests_total{status=\"200\"} 100\nhttp_requests_total{status=\"500\"} 0\n",
    );
    fakes[1].set_metrics("# no traffic yet\n");
    // Elapsed time is the point: the engine must scrape these counters (every 200 ms probe) before
    // they move, so the error rate it judges is the ratio of the change, not of the totals.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fakes[0].set_metrics(
        "http_requests_total{status=\"200\"} 150\nhttp_requests_total{status=\"500\"} 50\n",
    );
    let d = wait_for(&mut out.desired, "err-0 ejected by error rate", |d| {
        member(d, "err", "err-0") == Some(Membership::Out)
    })
    .await?;
    let ev = &d.services[&ObjKey::new("t", "err")].status.pods[0];
    assert_eq!(ev.error_ratio, Some(0.5));
    assert_eq!(member(&d, "err", "err-1"), Some(Membership::In));
    Ok(())
}

#[tokio::test]
async fn only_the_leader_sends_verdicts_and_a_kit_pod_accepts_them() -> Result<()> {
    // A standby probes a pod but sends it no verdict (two replicas' views could differ); once
    // it leads, its verdicts carry the operator's signature and a real kit server accepts them.
    let keys = Arc::new(VerdictKeys::ephemeral());
    let check = VerdictCheck::new(Some("web-0".into()), keys.published())?;
    let kit = Kit::new(Health::builder().verdicts(check).build(), None)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let no_api = warp::any()
        .and_then(|| async { Err::<warp::reply::Response, _>(warp::reject::not_found()) });
    let running = Running::start(
        listener,
        kit.filter(no_api),
        kit.health.clone(),
        DrainOptions::default(),
    )?;
    let pod = inventory::pod("web", 0, addr.ip());
    let inv = Inventory::from_parts([service("web", addr.port(), Some("backup"), |_| {})], [pod]);
    let (lead, leadership) = Leadership::new();
    let (_tx, rx) = watch::channel(Arc::new(inv));
    let cfg = EngineConfig {
        verdicts: Some(VerdictSigning { keys, leadership }),
        ..EngineConfig::default()
    };
    let (mut out, _thread) = engine::spawn(rx, Metrics::new()?, cfg)?;
    let metrics = kit.metrics.clone().context("kit metrics")?;
    let readiness_probes = || {
        metrics
            .registry()
            .gather()
            .iter()
            .filter(|f| f.name() == "http_requests_total")
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|m| m.get_label().iter().any(|l| l.value() == "/readyz"))
            .map(|m| m.get_counter().get_value())
            .sum::<f64>()
    };
    let verdicts = kit.health.traffic().verdict_check().counter();
    let total = |outcome: &str| verdicts.with_label_values(&[outcome]).get();
    // Once decided, the pod has a verdict (`serving`) the leader would send.
    wait_for(&mut out.desired, "the pod decided healthy", |d| {
        member(d, "web", "web-0") == Some(Membership::In)
    })
    .await?;
    let decided = readiness_probes();
    poll(
        "five probes from the standby after the decision",
        WAIT,
        || async { Ok((readiness_probes() >= decided + 5.0).then_some(())) },
    )
    .await?;
    let outcomes = [
        "accepted",
        "unsigned",
        "forged",
        "stale",
        "replayed",
        "unknown_key",
    ];
    assert!(
        outcomes.iter().all(|o| total(o) == 0),
        "a standby sent a verdict"
    );
    lead.lead_unbounded();
    poll("three verdicts accepted from the leader", WAIT, || async {
        Ok((total("accepted") >= 3).then_some(()))
    })
    .await?;
    assert!(
        outcomes[1..].iter().all(|o| total(o) == 0),
        "every verdict of the leader verifies"
    );
    lead.stop();
    let accepted = total("accepted");
    let probes = readiness_probes();
    poll("five more probes after stepping down", WAIT, || async {
        Ok((readiness_probes() >= probes + 5.0).then_some(()))
    })
    .await?;
    // A probe already in flight when leadership ended may still carry one.
    assert!(
        total("accepted") <= accepted + 1,
        "verdicts after stepping down"
    );
    running.stop().await?;
    Ok(())
}

/// `users` failing over to `users-backup` (failover off), as the writer's labels leave the
/// inventory: the fallback's pods labelled into the primary's Service while `failed_over`.
fn labelled_inventory(
    primary: &[FakePod],
    fallback: &[FakePod],
    failed_over: bool,
) -> Arc<Inventory> {
    let mut backup = service("users-backup", fallback[0].addr.port(), None, |_| {});
    backup.failover_enabled = false;
    let users = service("users", primary[0].addr.port(), Some("users-backup"), |f| {
        f.recover_after = Duration::from_millis(400);
        f.max_flaps = 100;
    });
    let mut backup_pods = pods("users-backup", fallback);
    for p in &mut backup_pods {
        let serves = if failed_over { "true" } else { "false" };
        p.serves
            .insert(flotilla_crds::labels::serves("users"), serves.to_owned());
    }
    Arc::new(Inventory::from_parts(
        [users, backup],
        pods("users", primary).into_iter().chain(backup_pods),
    ))
}

/// A leading engine on `inventory`, sending signed verdicts, with the failback drain given.
fn leading_engine(
    inventory: watch::Receiver<Arc<Inventory>>,
    fallback_drain: Duration,
) -> Result<EngineOutputs> {
    let (lead, leadership) = Leadership::new();
    lead.lead_unbounded();
    let cfg = EngineConfig {
        fallback_drain,
        verdicts: Some(VerdictSigning {
            keys: Arc::new(VerdictKeys::ephemeral()),
            leadership,
        }),
        ..EngineConfig::default()
    };
    Ok(engine::spawn(inventory, Metrics::new()?, cfg)?.0)
}

/// Waits until the engine's desired state has `users` on `want`.
async fn users_on(out: &mut EngineOutputs, what: &str, want: ActiveTarget) -> Result<()> {
    wait_for(&mut out.desired, what, |d: &Desired| {
        d.services
            .get(&ObjKey::new("t", "users"))
            .is_some_and(|s| s.status.active == Some(want))
    })
    .await
    .map(drop)
}

/// Waits until every pod of `pods` heard `verdict` on its last probe.
async fn all_heard(what: &str, pods: &[FakePod], verdict: &str) -> Result<()> {
    poll(what, WAIT, || async {
        Ok(pods
            .iter()
            .all(|p| p.verdict().as_deref() == Some(verdict))
            .then_some(()))
    })
    .await
}

fn set_all(pods: &[FakePod], status: u16) {
    for p in pods {
        p.set_status(status);
    }
}

/// Fails `users` over, then back once its pods answer again: the fallback's pods hear `ejected`
/// (the drain).
async fn fail_over_and_back(
    out: &mut EngineOutputs,
    tx: &watch::Sender<Arc<Inventory>>,
    primary: &[FakePod],
    fallback: &[FakePod],
) -> Result<()> {
    users_on(out, "primary active", ActiveTarget::Primary).await?;
    set_all(primary, 503);
    users_on(out, "failover", ActiveTarget::Fallback).await?;
    tx.send_replace(labelled_inventory(primary, fallback, true));
    set_all(primary, 200);
    users_on(out, "failback", ActiveTarget::Primary).await?;
    all_heard("the fallback's pods drained", fallback, EJECTED).await?;
    tx.send_replace(labelled_inventory(primary, fallback, false));
    Ok(())
}

/// Fails `users` over (again) and waits until the fallback's pods hear `serving`.
async fn fail_over_to_serving(
    out: &mut EngineOutputs,
    primary: &[FakePod],
    fallback: &[FakePod],
) -> Result<()> {
    set_all(primary, 503);
    users_on(out, "failover", ActiveTarget::Fallback).await?;
    all_heard(
        "the fallback's pods serving the primary's traffic",
        fallback,
        SERVING,
    )
    .await
}

#[tokio::test]
async fn a_fallback_pod_taken_back_into_traffic_while_draining_hears_serving() -> Result<()> {
    // After a failback the fallback's pods are told `ejected` for a while, so the primary's
    // clients leave them. A primary that fails again within that drain sends its traffic back
    // to them: from then on they must hear `serving`, or they would keep closing the
    // connections of the clients they now serve. The drain here outlasts the test's wait, so
    // only a drain ended by the failover lets them hear `serving` in time.
    let primary = start_group(3, 70, 2).await?;
    let fallback = start_group(3, 71, 2).await?;
    let (tx, rx) = watch::channel(labelled_inventory(&primary, &fallback, false));
    let mut out = leading_engine(rx, Duration::from_secs(600))?;
    fail_over_and_back(&mut out, &tx, &primary, &fallback).await?;
    fail_over_to_serving(&mut out, &primary, &fallback).await
}

#[tokio::test]
async fn a_fallback_pod_drained_by_an_earlier_leader_hears_serving_when_it_takes_traffic(
) -> Result<()> {
    // A pod keeps the last `ejected` it heard for the verdict's lifetime (10 s). When the
    // leader that drained the fallback's pods goes away and the next one fails the primary over
    // to them, they must hear `serving` from it, or they would keep closing the connections of
    // the clients they now serve.
    let primary = start_group(3, 72, 2).await?;
    let fallback = start_group(3, 73, 2).await?;
    let (tx, rx) = watch::channel(labelled_inventory(&primary, &fallback, false));
    let mut out = leading_engine(rx, Duration::from_secs(600))?;
    fail_over_and_back(&mut out, &tx, &primary, &fallback).await?;
    // The leader stops (its engine ends with its inventory); the next starts afresh.
    drop((tx, out));
    let (_tx, rx) = watch::channel(labelled_inventory(&primary, &fallback, false));
    let mut out = leading_engine(rx, EngineConfig::default().fallback_drain)?;
    users_on(&mut out, "primary active", ActiveTarget::Primary).await?;
    fail_over_to_serving(&mut out, &primary, &fallback).await
}
