//! `kubectl flotilla dashboard` in a real browser. `kubesim up --operator --demo` starts the
//! demo fleet (users, auth, orders, shipping and their broker); a standby MicroService for users is added and users may fail
//! over to it. The dashboard runs as a user runs it (`kubectl flotilla dashboard`) and headless
//! Chromium, driven through chromedriver over WebDriver, reads the page's DOM: the fleet with
//! each service's readiness, then a maintenance failover of users
//! (`spec.failover.holdOnFallback`) reaching the open page within seconds, without a reload,
//! with its timeline entry and the standby's pods carrying the traffic; a screenshot; the
//! failback shown the same way; the command's bad input (its address in use, no kubeconfig, a
//! user without RBAC: one line and exit 1 each); a clean stop on SIGTERM.
//!
//! The screenshot is written to the test's temporary directory; with
//! `FLOTILLA_DASHBOARD_SCREENSHOT=docs/dashboard.png` it also refreshes the README's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use flotilla_crds::{conditions, labels, ActiveTarget, MicroService};
use flotilla_e2e::walkthrough::{kubesim_up, stop_kubesim};
use flotilla_e2e::{msvc, tools};
use flotilla_testkit::cluster::{client_from_kubeconfig, FIELD_MANAGER};
use flotilla_testkit::paths::{repo_root, tail};
use flotilla_testkit::wait::{for_object, poll, Changes};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::readme::{command, output};
use webdriver::{png_size, Browser};

mod webdriver;

/// Starting kubesim, the operator and the demo's pods on a loaded 2-core machine.
const UP_TIMEOUT: Duration = Duration::from_secs(180);
/// What the page must show within: a watch event, the stream's debounce, a redraw. A failover
/// also waits for the operator to act on the hold.
const SHOWN: Duration = Duration::from_secs(15);
/// The browser window; the screenshot is as wide.
const WINDOW: (u32, u32) = (1280, 1100);
const NS: &str = "default";
const STANDBY: &str = "users-standby";
const INSTALL: &str = "run e2e/install-tools.sh: it installs Debian's chromium and chromium-driver";

/// Reads what the page shows, from its DOM.
const READ_PAGE: &str = r##"
const text = (e) => (e ? e.textContent : "");
return {
  conn: document.getElementById("conn").dataset.state,
  rows: [...document.querySelectorAll("#fleet tbody tr[data-service]")].map((r) => ({
    service: r.dataset.service,
    ready: text(r.querySelector("[data-field=ready]")),
    active: r.dataset.active,
    traffic: text(r.querySelector("[data-field=traffic]")),
  })),
  timeline: [...document.querySelectorAll("#timeline li[data-reason]")].map((li) => ({
    reason: li.dataset.reason,
    service: li.dataset.service,
  })),
  markers: [...document.querySelectorAll("#plot circle[data-reason]")].map((c) => c.dataset.reason),
  pods: [...document.querySelectorAll("#pods tbody tr[data-pod]")].map((r) => ({
    track: r.dataset.track,
    serves: text(r.querySelector("[data-field=serves]")),
  })),
  loads: performance.getEntriesByType("navigation").length,
};
"##;

#[derive(Deserialize, Debug)]
struct Page {
    conn: String,
    rows: Vec<Row>,
    timeline: Vec<Moment>,
    markers: Vec<String>,
    pods: Vec<PodRow>,
    loads: u32,
}

#[derive(Deserialize, Debug)]
struct Row {
    service: String,
    ready: String,
    active: String,
    traffic: String,
}

#[derive(Deserialize, Debug)]
struct Moment {
    reason: String,
    service: String,
}

#[derive(Deserialize, Debug)]
struct PodRow {
    track: String,
    serves: String,
}

impl Page {
    fn row(&self, name: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.service == format!("{NS}/{name}"))
    }
}

async fn read(browser: &Browser) -> Result<Page> {
    Ok(serde_json::from_value(browser.execute(READ_PAGE).await?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_and_a_failover_in_a_browser() -> Result<()> {
    let started = Instant::now();
    let chromedriver = tools::find("chromedriver").context(INSTALL)?;
    let chromium = tools::find("chromium").context(INSTALL)?;
    let state = tempfile::tempdir()?;
    // Chromium starts while the cluster comes up.
    let (up, browser) = tokio::join!(
        kubesim_up(&["--operator", "--demo"], state.path(), 235, UP_TIMEOUT),
        Browser::start(&chromedriver, &chromium, WINDOW.0, WINDOW.1),
    );
    let (mut kubesim, kubeconfig) = up?;
    // `kubesim up` prints its kubeconfig before it installs the CRD, starts the operator and
    // applies the demo, and it stops its children on a signal only once that is done: wait for
    // it before anything can fail and stop it.
    let applied = demo_applied(&kubeconfig).await;
    let result = match applied.and(browser) {
        Ok(browser) => {
            let result = session(&kubeconfig, &browser, state.path()).await;
            if result.is_err() {
                let text = browser.execute("return document.body.innerText").await;
                eprintln!("===== the page\n{}", text.unwrap_or_default());
            }
            browser.quit().await;
            result
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        eprintln!(
            "===== operator log (last 40 lines)\n{}",
            tail(&state.path().join("operator.log"), 40)
        );
        if let Ok(client) = client_from_kubeconfig(&kubeconfig).await {
            eprintln!(
                "{}",
                flotilla_testkit::dump::namespace_report(&client, NS).await
            );
        }
    }
    stop_kubesim(&mut kubesim, Duration::from_secs(60)).await;
    println!(
        "dashboard browser test: {:.1}s wall time",
        started.elapsed().as_secs_f64()
    );
    result
}

/// The demo fleet's MicroServices (`kubesim up --demo`).
const DEMO: [&str; 4] = ["users", "auth", "orders", "shipping"];

/// Waits until `kubesim up` has applied the demo's MicroServices.
async fn demo_applied(kubeconfig: &Path) -> Result<()> {
    let client = client_from_kubeconfig(kubeconfig).await?;
    let msvcs: Api<MicroService> = Api::namespaced(client, NS);
    for name in DEMO {
        for_object(&msvcs, name, UP_TIMEOUT, |_| true).await?;
    }
    Ok(())
}

async fn session(kubeconfig: &Path, browser: &Browser, dir: &Path) -> Result<()> {
    let client = client_from_kubeconfig(kubeconfig).await?;
    let msvcs: Api<MicroService> = Api::namespaced(client.clone(), NS);
    // A standby running the users template, and users failing over to it.
    let mut standby = msvc::sample("users")?.msvc;
    standby.metadata.name = Some(STANDBY.into());
    msvcs
        .patch(
            STANDBY,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&standby),
        )
        .await?;
    let failover = json!({"spec": {"failover": {"enabled": true, "fallback": STANDBY}}});
    msvcs
        .patch("users", &PatchParams::default(), &Patch::Merge(&failover))
        .await?;
    // Serving from the start, so the timeline has the figures from before the failover.
    let dashboard = Dashboard::start(kubeconfig).await?;
    // Enabling failover rolls users' pods (they get the membership label): wait for every roll
    // to end, the old pods to be gone and the engine to judge users' new pods healthy.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    Changes::watch(&client, NS)
        .until("the fleet to settle", UP_TIMEOUT, || async {
            let all = msvcs.list(&Default::default()).await?.items;
            let running = pods.list(&Default::default()).await?.items;
            let settled = DEMO.iter().chain([&STANDBY]).all(|name| {
                all.iter()
                    .find(|m| m.metadata.name.as_deref() == Some(name))
                    .is_some_and(|m| settled(m, &running))
            });
            let users = all
                .iter()
                .find(|m| m.metadata.name.as_deref() == Some("users"));
            let judged = users.is_some_and(|m| {
                let f = m.status.as_ref().and_then(|s| s.failover.as_ref());
                f.is_some_and(|f| {
                    f.active == Some(ActiveTarget::Primary)
                        && f.total_pods == Some(m.spec.replicas)
                        && f.healthy_pods == f.total_pods
                })
            });
            Ok((settled && judged).then_some(()))
        })
        .await?;
    let expected: BTreeMap<String, String> = msvcs
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|m| Some((m.metadata.name?, m.status?.ready?)))
        .collect();
    ensure!(
        expected.len() == DEMO.len() + 1,
        "the demo's MicroServices and the standby: {expected:?}"
    );

    browser
        .open(&format!("{}#{NS}/users", dashboard.url))
        .await?;
    poll("the page to show the demo fleet", SHOWN, || async {
        let page = read(browser).await?;
        let fleet_shown = expected
            .iter()
            .all(|(name, ready)| page.row(name).is_some_and(|r| r.ready == *ready));
        let primary = page.row("users").is_some_and(|r| r.active == "primary");
        if page.conn == "live" && fleet_shown && primary && page.rows.len() == expected.len() {
            Ok(Some(()))
        } else {
            Err(anyhow!(
                "the page shows {page:?}; the API says {expected:?}"
            ))
        }
    })
    .await?;

    let asked = Instant::now();
    let hold = json!({"spec": {"failover": {"holdOnFallback": true}}});
    msvcs
        .patch("users", &PatchParams::default(), &Patch::Merge(&hold))
        .await?;
    poll("the page to show users failed over", SHOWN, || async {
        let page = read(browser).await?;
        let row = page.row("users");
        let switched = row.is_some_and(|r| {
            r.active == "fallback" && r.traffic.contains(&format!("fallback {STANDBY} (held)"))
        });
        let entry = page
            .timeline
            .iter()
            .any(|m| m.reason == "FailedOver" && m.service == format!("{NS}/users"));
        let marker = page.markers.iter().any(|r| r == "FailedOver");
        let carried = page
            .pods
            .iter()
            .any(|p| p.track == "fallback" && p.serves == "in");
        if switched && entry && marker && carried && page.loads == 1 {
            Ok(Some(()))
        } else {
            Err(anyhow!("the page shows {page:?}"))
        }
    })
    .await?;
    println!(
        "the failover reached the page {:.1}s after the hold was asked",
        asked.elapsed().as_secs_f64()
    );

    let png = browser.screenshot().await?;
    let (width, height) = png_size(&png)?;
    ensure!(
        width == WINDOW.0 && height > WINDOW.1 / 2,
        "the screenshot is {width}x{height}"
    );
    let shot = dir.join("dashboard.png");
    std::fs::write(&shot, &png)?;
    println!("screenshot: {}", shot.display());
    if let Some(keep) = std::env::var_os("FLOTILLA_DASHBOARD_SCREENSHOT") {
        let keep = repo_root().join(PathBuf::from(keep));
        std::fs::write(&keep, &png).with_context(|| format!("writing {}", keep.display()))?;
    }

    // Releasing the hold: the primary's pods have stayed healthy, so the traffic returns at once.
    let release = json!({"spec": {"failover": {"holdOnFallback": false}}});
    msvcs
        .patch("users", &PatchParams::default(), &Patch::Merge(&release))
        .await?;
    poll("the page to show users failed back", SHOWN, || async {
        let page = read(browser).await?;
        let back = page.row("users").is_some_and(|r| r.active == "primary");
        let entry = page
            .timeline
            .iter()
            .any(|m| m.reason == "FailedBack" && m.service == format!("{NS}/users"));
        let carried = page.pods.iter().any(|p| p.track == "fallback");
        if back && entry && !carried && page.loads == 1 {
            Ok(Some(()))
        } else {
            Err(anyhow!("the page shows {page:?}"))
        }
    })
    .await?;

    bad_input(kubeconfig, &dashboard.address, dir).await?;
    dashboard.stop().await
}

/// Ready, with every pod on the current template and no other pod left (a terminating one).
fn settled(m: &MicroService, pods: &[Pod]) -> bool {
    let want = Some(m.spec.replicas);
    let name = m.metadata.name.as_deref();
    let own = pods
        .iter()
        .filter(|p| p.labels().get(labels::INSTANCE).map(String::as_str) == name)
        .count();
    own == usize::try_from(m.spec.replicas).unwrap_or_default()
        && m.status.as_ref().is_some_and(|s| {
            s.replicas == want
                && s.updated_replicas == want
                && s.ready_replicas == want
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == conditions::READY && c.status == conditions::TRUE)
        })
}

/// The bad input of the command: each is refused with one line and exit 1.
async fn bad_input(kubeconfig: &Path, address: &str, dir: &Path) -> Result<()> {
    let dashboard = |address: &'static str| ["flotilla", "dashboard", "--address", address];
    let taken = output(
        kubeconfig,
        "kubectl",
        &["flotilla", "dashboard", "--address", address],
    )
    .await?;
    refused(&taken, &format!("error: cannot listen on {address}: "))?;
    let missing = output(
        &dir.join("missing.yaml"),
        "kubectl",
        &dashboard("127.0.0.1:0"),
    )
    .await?;
    refused(&missing, "error: cannot reach a cluster: ")?;
    let nobody = dir.join("nobody.yaml");
    flotilla_e2e::chart_rbac::impersonating_kubeconfig(kubeconfig, &nobody, "nobody")?;
    let forbidden = output(&nobody, "kubectl", &dashboard("127.0.0.1:0")).await?;
    refused(
        &forbidden,
        "error: forbidden: the dashboard lists and watches MicroServices: ",
    )
}

fn refused(out: &std::process::Output, starts: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && stderr.starts_with(starts) && stderr.lines().count() == 1,
        "expected exit 1 and one line starting {starts:?}, got {:?}: {stderr}",
        out.status.code()
    );
    Ok(())
}

/// `kubectl flotilla dashboard` running on a free port.
struct Dashboard {
    child: Child,
    /// `http://127.0.0.1:<port>/`.
    url: String,
    /// `127.0.0.1:<port>`.
    address: String,
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl Dashboard {
    async fn start(kubeconfig: &Path) -> Result<Dashboard> {
        let mut child = command(
            kubeconfig,
            "kubectl",
            &["flotilla", "dashboard", "--address", "127.0.0.1:0"],
        )?
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting kubectl flotilla dashboard")?;
        let mut lines =
            BufReader::new(child.stdout.take().context("the dashboard's stdout")?).lines();
        let line = tokio::time::timeout(UP_TIMEOUT, lines.next_line())
            .await
            .context("the dashboard did not say where it serves")??
            .context("the dashboard exited before serving")?;
        // "Serving the Flotilla dashboard of namespace "default" on http://127.0.0.1:PORT/ (...)"
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .with_context(|| format!("no URL in {line:?}"))?
            .to_owned();
        let address = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        Ok(Dashboard {
            child,
            url,
            address,
            _stdout: lines,
        })
    }

    /// SIGTERM, as a service manager or Ctrl-C stops it: exit 0 within seconds.
    async fn stop(mut self) -> Result<()> {
        let pid = self.child.id().context("the dashboard already exited")?;
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .context("the dashboard did not stop on SIGTERM")??;
        ensure!(status.success(), "the dashboard exited with {status}");
        Ok(())
    }
}
