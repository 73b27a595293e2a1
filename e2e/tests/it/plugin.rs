//! `kubectl flotilla` as a user runs it: kubectl finds the `kubectl-flotilla` executable on the
//! PATH and runs it with the test cluster's kubeconfig. A guarded `users` is shown as a tree and
//! in the fleet list, a bad release is waited on (`status` fails) and explained (`why`), retried
//! (`retry` is acknowledged); with rollouts paused a release that passed its analysis waits
//! until `promote`, and another is ended by `abort`; once resumed, a release is waited on until
//! it is released; `get --watch` redraws when the service scales. Bad input (an unknown name, a retry with nothing to retry, a
//! malformed timeout, a user without RBAC) gets one line and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_crds::{FailOn, RolloutPhase, RolloutStatus, RolloutStrategy};
use flotilla_e2e::env::run_test;
use flotilla_e2e::msvc;
use flotilla_e2e::table::cell;
use flotilla_testkit::paths::workspace_binary;
use flotilla_testkit::{wait, Harness};
use kube::api::{Patch, PatchParams};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const NAME: &str = "users";
/// A release analysed and then rolled back or promoted, on a loaded machine.
const RELEASE_TIMEOUT: &str = "150s";

/// `kubectl flotilla <args>` against the test's cluster, in the test's namespace.
struct Plugin {
    kubeconfig: PathBuf,
    path: std::ffi::OsString,
    namespace: String,
}

impl Plugin {
    fn new(h: &Harness) -> Result<Plugin> {
        let binary = workspace_binary("kubectl-flotilla", "kubectl-flotilla")?;
        let dir = binary
            .parent()
            .context("the plugin binary has no directory")?;
        let mut dirs = vec![dir.to_path_buf()];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        Ok(Plugin {
            kubeconfig: h
                .kubeconfig_path()
                .context("the test cluster has no kubeconfig")?
                .to_path_buf(),
            path: std::env::join_paths(dirs)?,
            namespace: h.ns.clone(),
        })
    }

    fn command(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("flotilla")
            .args(["-n", &self.namespace])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("PATH", &self.path)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs to the end and returns what it printed and its exit code.
    async fn run_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<Run> {
        let out: Output = self
            .command(kubeconfig, args)
            .output()
            .await
            .context("running kubectl (is it on PATH?)")?;
        Ok(Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn run(&self, args: &[&str]) -> Result<Run> {
        self.run_as(&self.kubeconfig, args).await
    }

    /// Runs and expects exit 0; its stdout.
    async fn ok(&self, args: &[&str]) -> Result<String> {
        let run = self.run(args).await?;
        ensure!(run.code == Some(0), "kubectl flotilla {args:?}: {run:?}");
        Ok(run.stdout)
    }
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The run failed with `code` and said why in exactly one line containing `needle`.
    fn refused(&self, code: i32, needle: &str) -> Result<()> {
        let lines: Vec<&str> = self.stderr.lines().collect();
        ensure!(
            self.code == Some(code) && lines.len() == 1 && lines[0].contains(needle),
            "expected exit {code} and one line with {needle:?}, got {self:?}"
        );
        Ok(())
    }
}

async fn rollout(h: &Harness) -> Result<Option<RolloutStatus>> {
    Ok(h.msvcs().get(NAME).await?.status.and_then(|s| s.rollout))
}

async fn set_release(h: &Harness, image: &str, value: &str) -> Result<()> {
    let body = serde_json::json!({"spec": {"image": image, "podAnnotations": {"release": value}}});
    let params = PatchParams {
        field_manager: Some("flotilla-e2e".to_owned()),
        ..PatchParams::default()
    };
    h.msvcs().patch(NAME, &params, &Patch::Merge(&body)).await?;
    Ok(())
}

#[tokio::test]
async fn the_plugin_shows_steers_and_waits_on_releases() -> Result<()> {
    run_test("plugin", |h| {
        Box::pin(async move {
            let plugin = Plugin::new(h)?;
            let mut sample = msvc::sample(NAME)?;
            sample.msvc.spec.rollout.strategy = RolloutStrategy::Guarded;
            sample.msvc.spec.rollout.analysis_seconds = 5;
            sample.msvc.spec.rollout.ready_timeout_seconds = 30;
            // The test is about steering, not judging: a probe that times out on a loaded
            // machine must not fail a good release (an unpullable image always fails).
            sample.msvc.spec.rollout.fail_on = vec![FailOn::Restart];
            msvc::apply_sample(h, &sample).await?;
            plugin
                .ok(&["status", NAME, "--timeout", RELEASE_TIMEOUT])
                .await?;

            // The tree: the MicroService, its stable Deployment with both pods.
            let tree = plugin.ok(&["get", NAME]).await?;
            let lines: Vec<&str> = tree.lines().collect();
            ensure!(
                lines.first() == Some(&format!("MicroService {}/{NAME}", h.ns).as_str()),
                "{tree}"
            );
            ensure!(
                tree.contains("rollout: Stable · stable revision "),
                "{tree}"
            );
            ensure!(
                tree.contains(&format!("├── Deployment {NAME} (stable, revision ")),
                "{tree}"
            );
            let pods = lines.iter().filter(|l| l.contains("── Pod users-")).count();
            ensure!(pods == 2, "two pods expected in the tree:\n{tree}");

            // The fleet.
            let list = plugin.ok(&["list"]).await?;
            let rows: Vec<&str> = list.lines().collect();
            ensure!(rows.len() == 2 && rows[0].starts_with("NAME"), "{list}");
            ensure!(
                rows[1].starts_with(NAME) && rows[1].contains("Stable"),
                "{list}"
            );

            // A release whose image cannot be pulled: `status` waits and fails with the reason.
            set_release(h, "flotilla/userz:0.3.0", "bad").await?;
            let run = plugin
                .run(&["status", NAME, "--timeout", RELEASE_TIMEOUT])
                .await?;
            run.refused(1, "was rolled back")?;

            // `why` tells the rollback and its evidence.
            let why = plugin.ok(&["why", NAME]).await?;
            ensure!(why.contains("RolledBack ("), "{why}");
            ensure!(why.contains("evidence:"), "{why}");
            ensure!(
                why.contains("Warning RolledBack"),
                "the Events list the rollback:\n{why}"
            );

            // `retry` is acknowledged by the operator through status.
            let retry = plugin.ok(&["retry", NAME]).await?;
            ensure!(
                retry.contains("retry of revision") && retry.contains(": done, rollout phase "),
                "{retry}"
            );
            let token = rollout(h).await?.and_then(|r| r.retry_token);
            ensure!(token.is_some(), "status.rollout.retryToken is not set");

            // Paused: a good release passes its analysis and waits; `promote` ends the wait.
            plugin.ok(&["pause", NAME]).await?;
            set_release(h, "flotilla/users:0.1.0", "good").await?;
            h.wait("the analysis to pass and wait, paused", || async {
                Ok(rollout(h).await?.filter(|r| {
                    r.phase == RolloutPhase::Analyzing && r.reason.as_deref() == Some("Paused")
                }))
            })
            .await?;
            let promoted = plugin.ok(&["promote", NAME]).await?;
            ensure!(
                promoted.contains(": done, rollout phase Promoted"),
                "{promoted}"
            );

            // Still paused: the next release is aborted mid-analysis.
            set_release(h, "flotilla/users:0.1.0", "third").await?;
            h.wait("the third release's analysis", || async {
                Ok(rollout(h)
                    .await?
                    .filter(|r| r.phase == RolloutPhase::Analyzing))
            })
            .await?;
            let aborted = plugin.ok(&["abort", NAME]).await?;
            ensure!(
                aborted.contains(": done, rollout phase RolledBack"),
                "{aborted}"
            );
            let reason = rollout(h).await?.and_then(|r| r.reason);
            ensure!(reason.as_deref() == Some("Aborted"), "reason {reason:?}");

            // Resumed: a release is promoted on its own, and `status` waits for it.
            plugin.ok(&["resume", NAME]).await?;
            set_release(h, "flotilla/users:0.1.0", "fourth").await?;
            let released = plugin
                .ok(&["status", NAME, "--timeout", RELEASE_TIMEOUT])
                .await?;
            ensure!(
                released.contains(&format!("{NAME}: released:")),
                "{released}"
            );
            let phase = rollout(h).await?.map(|r| r.phase);
            ensure!(phase == Some(RolloutPhase::Promoted), "phase {phase:?}");

            history_and_undo(h, &plugin).await?;
            watch_redraws_on_scale(h, &plugin).await?;
            bad_input(h, &plugin).await
        })
    })
    .await
}

/// `history` lists every template with its outcome; `undo` goes back to the last good one
/// before the stable template without an analysis, and refuses a rolled-back or unknown one.
async fn history_and_undo(h: &Harness, plugin: &Plugin) -> Result<()> {
    let history = plugin.ok(&["history", NAME]).await?;
    let rows = history_rows(&history);
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    // The first template, the unpullable release, "good", the aborted "third", "fourth".
    ensure!(
        outcomes == ["Stable", "RolledBack", "Promoted", "RolledBack", "Promoted"],
        "outcomes {outcomes:?} in\n{history}"
    );
    ensure!(history.contains("RolledBack (Aborted)"), "{history}");
    ensure!(
        history.contains("flotilla-e2e"),
        "who changed the spec:\n{history}"
    );
    let listed = h
        .api::<k8s_openapi::api::apps::v1::ControllerRevision>()
        .list(&Default::default())
        .await?;
    ensure!(
        listed.items.len() == 5,
        "{} ControllerRevisions",
        listed.items.len()
    );

    let stable = rollout(h).await?.and_then(|r| r.stable_revision);
    let failed = &rows[1].number;
    plugin
        .run(&["undo", NAME, "--to-revision", failed])
        .await?
        .refused(
            1,
            "was rolled back; undo goes back only to a template that ran",
        )?;
    plugin
        .run(&["undo", NAME, "--to-revision", "42"])
        .await?
        .refused(1, "revision 42 is not in the history")?;
    // Back to "good", the newest good template before the stable one.
    let good = &rows[2];
    let undone = plugin.ok(&["undo", NAME]).await?;
    ensure!(
        undone.contains(&format!(
            "going back to revision {} ({}",
            good.number, good.template
        )) && undone.contains("is stable (Undone)"),
        "{undone}\n{history}"
    );
    let r = rollout(h).await?.context("no rollout status")?;
    ensure!(
        r.phase == RolloutPhase::Stable
            && r.stable_revision.as_deref() == Some(good.template.as_str())
            && r.stable_revision != stable,
        "after undo: {r:?}"
    );
    let canary = h.deployments().get_opt(&format!("{NAME}-canary")).await?;
    ensure!(canary.is_none(), "undo started a canary");
    let after = plugin.ok(&["history", NAME]).await?;
    let newest = history_rows(&after).pop().context("an empty history")?;
    ensure!(
        newest.stable
            && newest.template == good.template
            && newest.outcome == "Undone"
            && newest.line.contains("kubectl-flotilla"),
        "the undo is the newest entry, the stable one, by the plugin:\n{after}"
    );
    Ok(())
}

/// One row of `kubectl flotilla history`.
struct HistoryRow {
    number: String,
    stable: bool,
    template: String,
    outcome: String,
    line: String,
}

/// The rows of the history table (columns are separated by at least three spaces).
fn history_rows(table: &str) -> Vec<HistoryRow> {
    table
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('*'))
        .map(|l| {
            let cols: Vec<&str> = l
                .split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            let col = |i: usize| cols.get(i).copied().unwrap_or_default();
            HistoryRow {
                number: col(0).trim_end_matches(" *").to_owned(),
                stable: col(0).ends_with('*'),
                template: col(1).to_owned(),
                outcome: col(3).split(' ').next().unwrap_or_default().to_owned(),
                line: l.to_owned(),
            }
        })
        .collect()
}

/// `get --watch` draws once, then again when a third pod appears.
async fn watch_redraws_on_scale(h: &Harness, plugin: &Plugin) -> Result<()> {
    let mut child = plugin
        .command(&plugin.kubeconfig, &["get", NAME, "--watch"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = String::new();
    // The first drawing, complete once its Events heading is there.
    wait::within("the first drawing", Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("└── Events") {
                return Ok(());
            }
        }
        anyhow::bail!("the plugin ended: {seen}")
    })
    .await?;
    let body = serde_json::json!({"spec": {"replicas": 3}});
    h.msvcs()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    let mut drawing = Vec::new();
    wait::within(
        "a drawing with three pods",
        Duration::from_secs(90),
        async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("MicroService ") {
                    drawing.clear();
                }
                drawing.push(line.clone());
                let pods = drawing
                    .iter()
                    .filter(|l| l.contains("── Pod users-"))
                    .count();
                if pods == 3 {
                    return Ok(());
                }
            }
            anyhow::bail!("the plugin ended")
        },
    )
    .await?;
    child.kill().await?;
    Ok(())
}

/// One line and a non-zero exit for each mistake; nothing changed.
async fn bad_input(h: &Harness, plugin: &Plugin) -> Result<()> {
    plugin.run(&["get", "nosuch"]).await?.refused(
        1,
        &format!(
            "MicroService \"nosuch\" not found in namespace \"{}\"",
            h.ns
        ),
    )?;
    plugin
        .run(&["retry", NAME])
        .await?
        .refused(1, "nothing to retry: the last release was not rolled back")?;
    plugin
        .run(&["promote", NAME])
        .await?
        .refused(1, "nothing to promote: no release is being analysed")?;
    plugin
        .run(&["abort", NAME])
        .await?
        .refused(1, "nothing to abort: no release is being analysed")?;
    plugin
        .run(&["resume", NAME])
        .await?
        .refused(1, "not paused")?;
    let run = plugin.run(&["status", NAME, "--timeout", "5x"]).await?;
    ensure!(
        run.code == Some(2) && run.stderr.contains("unknown unit"),
        "{run:?}"
    );
    // A user the cluster grants nothing.
    let dir = tempfile::tempdir()?;
    let nobody = dir.path().join("nobody.yaml");
    flotilla_e2e::chart_rbac::impersonating_kubeconfig(&plugin.kubeconfig, &nobody, "nobody")?;
    plugin
        .run_as(&nobody, &["get", NAME])
        .await?
        .refused(1, "forbidden:")?;
    let annotations = h.msvcs().get(NAME).await?.metadata.annotations;
    let retry = annotations
        .as_ref()
        .and_then(|a| a.get(flotilla_crds::annotations::ROLLOUT_RETRY));
    ensure!(retry.is_some(), "the earlier retry's annotation is kept");
    Ok(())
}

/// Seconds the traffic has to move on a loaded machine.
const HOLD_TIMEOUT: &str = "90s";

#[tokio::test]
async fn the_plugin_holds_traffic_on_the_fallback_for_maintenance() -> Result<()> {
    // `failover` holds a healthy service's traffic on its fallback: status, the HELD column and
    // the tree show it; `failback` gives it back. A hold without a fallback, a second hold and
    // a release with no hold are refused with one line.
    run_test("plugin_hold", |h| {
        Box::pin(async move {
            let plugin = Plugin::new(h)?;
            let sample = msvc::sample(NAME)?;
            msvc::apply_secrets(h, &sample).await?;
            let mut standby = sample.msvc.clone();
            standby.metadata.name = Some("users-standby".into());
            standby.spec.replicas = 1;
            standby.spec.failover.enabled = false;
            h.apply(&standby).await?;
            let mut users = sample.msvc.clone();
            users.spec.failover.enabled = true;
            users.spec.failover.fallback = Some("users-standby".into());
            users.spec.failover.recover_after_seconds = 2;
            h.apply(&users).await?;
            msvc::wait_ready(h, "users-standby").await?;
            msvc::wait_ready(h, NAME).await?;

            plugin
                .run(&["failover", "users-standby"])
                .await?
                .refused(1, "has no fallback to hold traffic on")?;
            plugin
                .run(&["failback", NAME])
                .await?
                .refused(1, "not held on the fallback")?;

            let held = plugin
                .ok(&["failover", NAME, "--timeout", HOLD_TIMEOUT])
                .await?;
            ensure!(
                held.contains("users: traffic held on fallback users-standby: held on fallback for maintenance"),
                "{held}"
            );
            let table = kubectl(h, &["get", "msvc", NAME]).await?;
            ensure!(
                cell(&table, NAME, "ACTIVE") == Some("fallback")
                    && cell(&table, NAME, "HELD") == Some("true"),
                "kubectl get msvc:\n{table}"
            );
            let tree = plugin.ok(&["get", NAME]).await?;
            ensure!(
                tree.contains("traffic: fallback (users-standby, held)"),
                "{tree}"
            );
            plugin
                .run(&["failover", NAME])
                .await?
                .refused(1, "already held on the fallback users-standby")?;

            let back = plugin
                .ok(&["failback", NAME, "--timeout", HOLD_TIMEOUT])
                .await?;
            ensure!(back.contains("users: traffic back on the primary"), "{back}");
            let f = h.msvcs().get(NAME).await?.status.and_then(|s| s.failover);
            ensure!(
                f.as_ref().is_some_and(|f| f.held.is_none()
                    && f.active == Some(flotilla_crds::ActiveTarget::Primary)),
                "status.failover after the failback: {f:?}"
            );
            Ok(())
        })
    })
    .await
}

/// Plain `kubectl` against the test's cluster and namespace; its stdout.
async fn kubectl(h: &Harness, args: &[&str]) -> Result<String> {
    let kubeconfig = h
        .kubeconfig_path()
        .context("the test cluster has no kubeconfig")?;
    let out = Command::new("kubectl")
        .args(["-n", &h.ns])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .context("running kubectl")?;
    ensure!(out.status.success(), "kubectl {args:?}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
