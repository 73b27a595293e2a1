//! The chart's alerts and Grafana dashboard on a real Prometheus. On a local kubesim cluster the
//! operator (with the chart's RBAC) runs the users sample with a fallback; Debian's `prometheus`
//! scrapes the operator and every sample pod each second and evaluates the chart's rule file
//! (`charts/flotilla/files/prometheus-rules.yaml`, loaded as it is) each second. Each alert gets
//! the scenario it is about, and the test waits until Prometheus reports it: a release with an
//! unpullable image rolled back (and deployment writes failed by the API server meanwhile),
//! every pod failing (a failover, probe failures), a client that keeps calling a pod out of
//! traffic (sticky), the pods recovering with `maxFlaps: 1` (flapping), the operator stopped
//! (down) and a replica started while another holder keeps the Lease (not leading). Alerts without `for`
//! must be firing; alerts with one (minutes) must be pending, which says their expression holds,
//! and `promtool test rules` proves the durations. Then every query of the dashboard
//! (`files/grafana-dashboard.json`) must return data, with the dashboard's variables filled in
//! as Grafana fills them.
//!
//! Pods are scraped through file-based discovery written by the test with the labels the
//! chart's PodMonitor gives them (`job` = the MicroService); the operator with those of the
//! chart's ServiceMonitor (job `flotilla-metrics`, its namespace, labels honoured). The monitors
//! themselves need the Prometheus Operator on a real cluster and are checked by rendering
//! (`chart_monitoring`). Always on a local cluster: pod IPs must be reachable from the test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_crds::{labels, ActiveTarget, FailOn, MicroService, RolloutPhase, RolloutStrategy};
use flotilla_e2e::prometheus::{Config, Prometheus, StaticJob, TargetGroup};
use flotilla_e2e::{chart_rbac, monitoring, msvc};
use flotilla_testkit::http;
use flotilla_testkit::operator::{free_port, OperatorProcess};
use flotilla_testkit::Harness;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const PRIMARY: &str = "users";
/// The users sample's `port`, which also serves `/metrics`.
const PORT: i32 = 8080;
const FALLBACK: &str = "users-backup";
/// The job the chart's ServiceMonitor gives the operator (its metrics Service's name).
const OPERATOR_JOB: &str = "flotilla-metrics";
/// Deadline of one scenario step: a failover or a rollback on a loaded machine.
const STEP: Duration = Duration::from_secs(60);
/// Window put in for Grafana's `$__rate_interval`: longer than the whole test, so each panel
/// sees its scenario.
const RATE_INTERVAL: &str = "5m";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_in_their_scenarios_and_every_dashboard_query_has_data() -> Result<()> {
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    Harness::builder("observability")
        .node(|_| {})
        .operator(chart_rbac::launcher_at(&metrics_addr))
        .start()
        .await?
        .run(move |h| {
            Box::pin(async move {
                scenarios(h, &metrics_addr).await?;
                chart_rbac::check_no_forbidden_requests(h)
            })
        })
        .await
}

async fn scenarios(h: &Harness, metrics_addr: &str) -> Result<()> {
    let rules = monitoring::rules_path();
    let prom = Prometheus::start(&Config {
        interval: "1s".into(),
        rule_files: vec![rules],
        static_jobs: vec![StaticJob {
            job: OPERATOR_JOB.into(),
            target: metrics_addr.to_owned(),
            labels: BTreeMap::from([("namespace".into(), chart_rbac::NAMESPACE.into())]),
            honor_labels: true,
        }],
    })
    .await?;
    let alerts = Alerts::read()?;

    let sample = msvc::sample(PRIMARY)?;
    let token = admin_token(&sample)?;
    msvc::apply_secrets(h, &sample).await?;
    let mut backup = sample.msvc.clone();
    backup.metadata.name = Some(FALLBACK.into());
    backup.spec.replicas = 1;
    backup.spec.failover.enabled = false;
    backup.spec.rollout.strategy = RolloutStrategy::Guarded;
    backup.spec.rollout.fail_on = vec![FailOn::Restart];
    h.apply(&backup).await?;
    let mut users = sample.msvc.clone();
    users.spec.replicas = 2;
    users.spec.failover.enabled = true;
    users.spec.failover.fallback = Some(FALLBACK.into());
    users.spec.failover.recover_after_seconds = 1;
    users.spec.failover.max_flaps = 1;
    // Ejected pods are scraped too, so requests that keep reaching one make it sticky.
    users.spec.failover.scrape_metrics = true;
    h.apply(&users).await?;
    msvc::wait_ready(h, FALLBACK).await?;
    msvc::wait_ready(h, PRIMARY).await?;
    h.wait_within("two healthy primary pods", STEP, || async {
        let f = failover_status(h).await?;
        Ok(f.filter(|f| f.healthy_pods == Some(2)).map(|_| ()))
    })
    .await?;
    prom.set_file_targets(&pod_targets(h).await?)?;
    h.poll_within(
        "Prometheus to scrape the operator and 3 pods",
        STEP,
        || async {
            let up = prom.query("count(up == 1)").await?;
            Ok(up.first().filter(|s| s.value >= 4.0).map(|_| ()))
        },
    )
    .await?;
    // Before their scenarios the alerts are quiet (the down alert from before the first scrape
    // clears at the next evaluation). Reconcile errors may come from the start-up (a conflict on
    // a first status write), so that scenario is also checked by its counter.
    h.poll_within("the alerts quiet before the scenarios", STEP, || async {
        let early = prom.alerts().await?;
        Ok(early
            .iter()
            .all(|a| a.name == "FlotillaReconcileErrors")
            .then_some(()))
    })
    .await?;

    // A release that cannot be pulled is rolled back; meanwhile the API server fails the
    // operator's next three Deployment writes, so reconciles fail and are retried.
    h.kubesim()?
        .faults()
        .fail_next("patch", "deployments", 500, 3);
    let patch = json!({"spec": {"image": "flotilla/userz:0.3.0"}});
    h.msvcs()
        .patch(FALLBACK, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    h.wait_within("the release rolled back", STEP, || async {
        let ms = h.msvcs().get(FALLBACK).await?;
        let phase = ms.status.and_then(|s| s.rollout).map(|r| r.phase);
        Ok((phase == Some(RolloutPhase::RolledBack)).then_some(()))
    })
    .await?;
    alerts.wait(h, &prom, "FlotillaRolloutRolledBack").await?;
    alerts.wait(h, &prom, "FlotillaReconcileErrors").await?;
    let failed = prom
        .query(r#"flotilla_reconcile_failures_total{category="server_error"}"#)
        .await?;
    ensure!(
        failed.iter().any(|s| s.value >= 1.0),
        "the failed writes were not counted: {failed:?}"
    );

    // Every primary pod fails (one also failing its API calls): the Service's traffic fails
    // over to the fallback.
    let pods = h.pods_of(PRIMARY).await?;
    ensure!(pods.len() == 2, "{} primary pods", pods.len());
    let (a, b) = (&pods[0], &pods[1]);
    set_faults(a, &token, Some(r#"{"unhealthy": true, "errorRate": 1.0}"#)).await?;
    set_faults(b, &token, Some(r#"{"unhealthy": true}"#)).await?;
    h.wait_within("traffic on the fallback", STEP, || async {
        let active = failover_status(h).await?.and_then(|f| f.active);
        Ok((active == Some(ActiveTarget::Fallback)).then_some(()))
    })
    .await?;
    alerts.wait(h, &prom, "FlotillaServiceFailedOver").await?;
    alerts.wait(h, &prom, "FlotillaProbeFailuresRising").await?;

    // A client keeps calling a primary pod on its pod IP although it is out of traffic: sticky.
    let caller = Caller::start(pod_url(a)?);
    alerts.wait(h, &prom, "FlotillaStickyPods").await?;
    drop(caller);

    // The pods recover; flipping back would exceed maxFlaps, so the traffic is held: flapping.
    for p in [a, b] {
        set_faults(p, &token, None).await?;
    }
    alerts.wait(h, &prom, "FlotillaServiceFlapping").await?;
    let reasons = h.event_reasons(PRIMARY).await?;
    ensure!(
        reasons.iter().any(|r| r == "Flapping"),
        "no Flapping Event: {reasons:?}"
    );

    // With the operator running, every dashboard query has data and neither operator alert is
    // active.
    check_dashboard(&prom, h).await?;
    let active: Vec<String> = prom.alerts().await?.into_iter().map(|a| a.name).collect();
    for quiet in ["FlotillaOperatorDown", "FlotillaOperatorNotLeading"] {
        ensure!(
            !active.iter().any(|a| a == quiet),
            "{quiet} with the operator leading"
        );
    }

    // The operator stops: down. A replica comes up while another holds the Lease: not leading.
    ensure!(h.stop_operator().await?, "no operator was running");
    alerts.wait(h, &prom, "FlotillaOperatorDown").await?;
    let standby = start_standby(h, metrics_addr).await?;
    alerts.wait(h, &prom, "FlotillaOperatorNotLeading").await?;
    h.poll_within("the down alert to clear", STEP, || async {
        let down = prom
            .alerts()
            .await?
            .iter()
            .any(|a| a.name == "FlotillaOperatorDown");
        Ok((!down).then_some(()))
    })
    .await?;
    standby.stop().await?;
    alerts.all_seen()
}

/// The chart's alerts, and those whose scenario brought them.
struct Alerts {
    /// Name → whether the rule has a `for`.
    waits: BTreeMap<String, bool>,
    seen: std::sync::Mutex<BTreeSet<String>>,
}

impl Alerts {
    fn read() -> Result<Self> {
        let waits = monitoring::alerts(&monitoring::rules()?)?
            .into_iter()
            .map(|a| (a.name, a.for_.is_some()))
            .collect();
        Ok(Self {
            waits,
            seen: std::sync::Mutex::new(BTreeSet::new()),
        })
    }

    /// Waits until Prometheus reports `name` firing, or, for a rule with `for`, pending or
    /// firing.
    async fn wait(&self, h: &Harness, prom: &Prometheus, name: &str) -> Result<()> {
        let has_for = *self
            .waits
            .get(name)
            .with_context(|| format!("no alert {name} in the rule file"))?;
        let states: &[&str] = if has_for {
            &["pending", "firing"]
        } else {
            &["firing"]
        };
        let what = format!("alert {name} {}", states.join(" or "));
        h.poll_within(&what, STEP, || async {
            let active = prom.alerts().await?;
            Ok(active
                .iter()
                .any(|a| a.name == name && states.contains(&a.state.as_str()))
                .then_some(()))
        })
        .await?;
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
        Ok(())
    }

    /// Fails unless every alert of the rule file was brought by a scenario.
    fn all_seen(&self) -> Result<()> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let missing: Vec<&String> = self.waits.keys().filter(|a| !seen.contains(*a)).collect();
        ensure!(missing.is_empty(), "no scenario brought {missing:?}");
        Ok(())
    }
}

/// Runs every dashboard query, with the variables as Grafana fills them: each query variable's
/// `label_values` from Prometheus (all values selected), `$__rate_interval` a window spanning the
/// test. Each query must return at least one finite sample.
async fn check_dashboard(prom: &Prometheus, h: &Harness) -> Result<()> {
    let dash = monitoring::dashboard()?;
    let mut values = BTreeMap::from([("__rate_interval".to_owned(), RATE_INTERVAL.to_owned())]);
    for var in monitoring::label_values_variables(&dash)? {
        let options = prom.label_values(&var.metric, &var.label).await?;
        ensure!(!options.is_empty(), "variable ${} has no values", var.name);
        values.insert(var.name, monitoring::regex_alternation(&options));
    }
    ensure!(
        values.get("operator_job").map(String::as_str) == Some("(flotilla-metrics)"),
        "{values:?}"
    );
    let mut empty = Vec::new();
    for q in monitoring::panel_queries(&dash)? {
        let expr = monitoring::substitute(&q.expr, &values)?;
        let samples = prom.query(&expr).await?;
        if !samples.iter().any(|s| s.value.is_finite()) {
            empty.push(format!("{:?} {}: {expr} → {samples:?}", q.panel, q.ref_id));
        }
    }
    ensure!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    // The per-service gauge keeps the MicroService's own namespace (labels honoured), and the
    // pods' series are named after their MicroService.
    let serving = prom.query("flotilla_failover_healthy_endpoints").await?;
    ensure!(
        serving
            .iter()
            .any(|s| s.labels.get("namespace") == Some(&h.ns)
                && s.labels.get("name").map(String::as_str) == Some(PRIMARY)),
        "{serving:?}"
    );
    let jobs = prom.label_values("http_requests_total", "job").await?;
    ensure!(jobs == [PRIMARY, FALLBACK], "{jobs:?}");
    Ok(())
}

/// The file-discovery targets of the test's pods, labelled as the chart's PodMonitor labels
/// them: `job` the MicroService, `namespace`, `pod`.
async fn pod_targets(h: &Harness) -> Result<Vec<TargetGroup>> {
    let lp = ListParams::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ));
    let mut groups = Vec::new();
    for pod in h.pods().list(&lp).await?.items {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let job = pod
            .labels()
            .get(labels::INSTANCE)
            .cloned()
            .context("a pod without its MicroService label")?;
        groups.push(TargetGroup {
            targets: vec![format!("{ip}:{}", PORT)],
            labels: BTreeMap::from([
                ("job".to_owned(), job),
                ("namespace".to_owned(), h.ns.clone()),
                ("pod".to_owned(), pod.name_any()),
            ]),
        });
    }
    ensure!(groups.len() == 3, "{} pods with an IP", groups.len());
    Ok(groups)
}

/// `http://<pod IP>:<port>`.
fn pod_url(pod: &Pod) -> Result<String> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .context("pod has no IP")?;
    Ok(format!("http://{ip}:{}", PORT))
}

/// The bearer token of the users sample's `/admin/faults`, from its Secret.
fn admin_token(sample: &msvc::Sample) -> Result<String> {
    sample
        .secrets
        .iter()
        .filter(|s| s.metadata.name.as_deref() == Some("users-secrets"))
        .find_map(|s| s.string_data.as_ref()?.get("admin-token").cloned())
        .context("the users sample has no admin-token in its Secret")
}

/// Sets (`Some`) or clears (`None`) the faults of one pod.
async fn set_faults(pod: &Pod, token: &str, body: Option<&str>) -> Result<()> {
    let url = format!("{}/admin/faults", pod_url(pod)?);
    let request = match body {
        Some(b) => http::request(http::Method::POST, &url)
            .header("content-type", "application/json")
            .body(b.to_owned()),
        None => http::request(http::Method::DELETE, &url),
    };
    let reply = http::send(request.bearer_auth(token)).await?;
    ensure!(
        (200..300).contains(&reply.status),
        "{url} answered {}",
        reply.status
    );
    Ok(())
}

async fn failover_status(h: &Harness) -> Result<Option<flotilla_crds::FailoverStatus>> {
    let ms: MicroService = h.msvcs().get(PRIMARY).await?;
    Ok(ms.status.and_then(|s| s.failover))
}

/// A client calling one pod's API twenty times a second until dropped: the pacing of a load,
/// not a wait.
struct Caller(tokio::task::JoinHandle<()>);

impl Caller {
    fn start(base: String) -> Self {
        Self(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(50));
            loop {
                every.tick().await;
                // The answer does not matter (the pod fails every call); the call is counted.
                let _ = http::get(&format!("{base}/users")).await;
            }
        }))
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts a second operator, with leader election, on the first one's metrics address, after
/// creating its Lease held by another replica for an hour: it stays a standby.
async fn start_standby(h: &Harness, metrics_addr: &str) -> Result<OperatorProcess> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "flotilla-operator", "namespace": h.ns},
        "spec": {
            "holderIdentity": "another-replica",
            "leaseDurationSeconds": 3600,
            "acquireTime": now.to_string(),
            "renewTime": now.to_string(),
        }
    }))?;
    Api::<Lease>::namespaced(h.client.clone(), &h.ns)
        .create(&PostParams::default(), &lease)
        .await
        .context("creating the held Lease")?;
    let local = h.local().context("the test needs the local cluster")?;
    let args: Vec<String> = [
        "run",
        "--metrics-addr",
        metrics_addr,
        "--log-format",
        "text",
        "--leader-election",
        "--leader-election-namespace",
        &h.ns,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let envs = [("POD_NAME".to_owned(), "standby".to_owned())];
    let log = local.state_dir().join("standby-operator.log");
    OperatorProcess::start(local.kubeconfig_path(), &args, &envs, metrics_addr, log).await
}
