//! The README's "A release and an incident, step by step", each line run with bash exactly as
//! written, on the session the guarded-rollout walkthrough left (`users` guarded, 3 replicas, its
//! last release rolled back): pause, a release watched with `get --watch` until it waits, promote,
//! undo and history, a release aborted, resume, a maintenance failover and failback, and a Secret
//! rotation that rolls `auth`; then "Watching the fleet": the table and the dashboard.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use flotilla_e2e::table::{cell, columns};
use flotilla_testkit::wait::poll;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{as_written, command, in_readme, kubectl};

/// A release analysed (10 s) on a loaded machine, a standby started, a rolling update of auth.
const STEP_TIMEOUT: Duration = Duration::from_secs(150);

/// Runs `line` as written and checks its stdout contains every one of `wanted`.
async fn expect(kubeconfig: &Path, line: &str, wanted: &[&str]) -> Result<String> {
    let out = as_written(kubeconfig, line).await?;
    for w in wanted {
        ensure!(out.contains(w), "`{line}` printed no {w:?}:\n{out}");
    }
    Ok(out)
}

pub async fn steps(kubeconfig: &Path) -> Result<()> {
    release_paused_and_promoted(kubeconfig).await?;
    undo_and_history(kubeconfig).await?;
    release_aborted(kubeconfig).await?;
    maintenance(kubeconfig).await?;
    secret_rotation(kubeconfig).await?;
    watching(kubeconfig).await
}

async fn release_paused_and_promoted(kubeconfig: &Path) -> Result<()> {
    expect(
        kubeconfig,
        "kubectl flotilla pause users",
        &["users: paused: "],
    )
    .await?;
    as_written(
        kubeconfig,
        r#"kubectl patch msvc users --type merge -p '{"spec":{"image":"flotilla/users:0.1.0"}}'"#,
    )
    .await?;
    watch_until_paused(kubeconfig).await?;
    expect(
        kubeconfig,
        "kubectl flotilla promote users",
        &[": done, rollout phase Promoted"],
    )
    .await?;
    Ok(())
}

/// `kubectl flotilla get users --watch`, as written, until it draws the canary waiting with
/// reason `Paused`; then it is stopped as the README says (its Ctrl-C is a kill here).
async fn watch_until_paused(kubeconfig: &Path) -> Result<()> {
    let line = "kubectl flotilla get users --watch";
    in_readme(line)?;
    let mut child = command(kubeconfig, "bash", &["-c", line])?
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the watch")?;
    let stdout = child.stdout.take().context("the watch's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(STEP_TIMEOUT, async {
        while let Some(l) = lines.next_line().await? {
            let paused = l.starts_with("  rollout: Analyzing · stable revision ")
                && l.contains(" · canary revision ")
                && l.ends_with(" · Paused");
            seen.push(l);
            if paused {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    child.kill().await?;
    match found {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => bail!(
            "the watch ended without a paused canary:\n{}",
            seen.join("\n")
        ),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => bail!(
            "no paused canary drawn within {STEP_TIMEOUT:?}; last lines:\n{}",
            seen[seen.len().saturating_sub(20)..].join("\n")
        ),
    }
}

async fn undo_and_history(kubeconfig: &Path) -> Result<()> {
    expect(
        kubeconfig,
        "kubectl flotilla undo users",
        &[
            "users: going back to revision ",
            "flotilla/users:0.2.0)",
            "is stable (Undone)",
        ],
    )
    .await?;
    let history = as_written(kubeconfig, "kubectl flotilla history users").await?;
    let rows: Vec<&str> = history.lines().collect();
    ensure!(
        rows.first()
            .is_some_and(|h| h.starts_with("REVISION   TEMPLATE")),
        "{history}"
    );
    let stable: Vec<&&str> = rows
        .iter()
        .filter(|r| r.split_whitespace().nth(1) == Some("*"))
        .collect();
    ensure!(
        stable.len() == 1
            && stable[0].contains("flotilla/users:0.2.0")
            && stable[0].contains("Undone"),
        "one stable row, the undone 0.2.0:\n{history}"
    );
    ensure!(
        rows.iter()
            .any(|r| r.contains("flotilla/users:0.1.0") && r.contains("Promoted")),
        "the promoted 0.1.0 is in the history:\n{history}"
    );
    ensure!(
        rows.iter()
            .any(|r| r.contains("flotilla/userz:0.3.0") && r.contains("RolledBack")),
        "the rolled-back 0.3.0 is in the history:\n{history}"
    );
    Ok(())
}

async fn release_aborted(kubeconfig: &Path) -> Result<()> {
    as_written(
        kubeconfig,
        r#"kubectl patch msvc users --type merge -p '{"spec":{"image":"flotilla/users:0.1.0"}}'"#,
    )
    .await?;
    expect(
        kubeconfig,
        "kubectl wait msvc/users --for=jsonpath='{.status.rollout.phase}'=Analyzing --timeout=60s",
        &["condition met"],
    )
    .await?;
    expect(
        kubeconfig,
        "kubectl flotilla abort users",
        &[": done, rollout phase RolledBack", "(Aborted: "],
    )
    .await?;
    expect(
        kubeconfig,
        "kubectl flotilla resume users",
        &["users: resumed: "],
    )
    .await?;
    let image = kubectl(
        kubeconfig,
        &[
            "get",
            "deploy",
            "users",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
    .await?;
    ensure!(
        image == "flotilla/users:0.2.0",
        "the stable pods run {image}"
    );
    Ok(())
}

async fn maintenance(kubeconfig: &Path) -> Result<()> {
    expect(
        kubeconfig,
        "sed 's/^  name: users$/  name: users-standby/' services/deploy/users.yaml | kubectl apply -f -",
        &["microservice.flotilla.rs/users-standby created"],
    )
    .await?;
    as_written(
        kubeconfig,
        r#"kubectl patch msvc users --type merge -p '{"spec":{"failover":{"enabled":true,"fallback":"users-standby"}}}'"#,
    )
    .await?;
    expect(
        kubeconfig,
        "kubectl flotilla failover users",
        &["users: traffic held on fallback users-standby: held on fallback for maintenance"],
    )
    .await?;
    let table = as_written(kubeconfig, "kubectl get msvc users").await?;
    ensure!(
        cell(&table, "users", "ACTIVE") == Some("fallback")
            && cell(&table, "users", "HELD") == Some("true"),
        "{table}"
    );
    expect(
        kubeconfig,
        "kubectl flotilla failback users",
        &["users: traffic back on the primary"],
    )
    .await?;
    Ok(())
}

async fn secret_rotation(kubeconfig: &Path) -> Result<()> {
    let digest = || async {
        kubectl(
            kubeconfig,
            &[
                "get",
                "deploy",
                "auth",
                "-o",
                r"jsonpath={.spec.template.metadata.annotations.flotilla\.rs/config-digest}",
            ],
        )
        .await
    };
    let before = digest().await?;
    ensure!(
        before.contains("Secret/auth-secrets:"),
        "auth's template has no digest of auth-secrets: {before:?}"
    );
    expect(
        kubeconfig,
        r#"kubectl patch secret auth-secrets -p "{\"data\":{\"signing-key\":\"$(openssl genpkey -algorithm ed25519 | base64 | tr -d '\n')\"}}""#,
        &["secret/auth-secrets patched"],
    )
    .await?;
    poll("the ConfigChanged Event", STEP_TIMEOUT, || async {
        let events = as_written(
            kubeconfig,
            "kubectl get events --field-selector reason=ConfigChanged",
        )
        .await?;
        let announced = events
            .lines()
            .any(|l| l.contains("microservice/auth") && l.contains("Secret auth-secrets changed"));
        if announced {
            Ok(Some(()))
        } else {
            bail!("no ConfigChanged Event for auth yet:\n{events}")
        }
    })
    .await?;
    let after = digest().await?;
    ensure!(after != before, "auth's template digest did not change");
    expect(
        kubeconfig,
        "kubectl rollout status deploy/auth --timeout=120s",
        &["deployment \"auth\" successfully rolled out"],
    )
    .await?;
    Ok(())
}

/// "Watching the fleet": `kubectl get msvc` has the request-figure columns, and the dashboard
/// serves the fleet on the address the README opens.
async fn watching(kubeconfig: &Path) -> Result<()> {
    let table = as_written(kubeconfig, "kubectl get msvc").await?;
    let header = columns(&table);
    ensure!(
        ["RPS", "ERRORS", "P99-MS"]
            .iter()
            .all(|c| header.contains(c)),
        "{table}"
    );
    for name in ["auth", "users", "users-standby"] {
        ensure!(
            cell(&table, name, "NAME") == Some(name),
            "{name} missing:\n{table}"
        );
    }
    let line = "kubectl flotilla dashboard";
    in_readme(line)?;
    let mut child = command(kubeconfig, "bash", &["-c", line])?
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the dashboard")?;
    let stdout = child.stdout.take().context("the dashboard's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let serving =
        "Serving the Flotilla dashboard of namespace \"default\" on http://127.0.0.1:8001/";
    let first = tokio::time::timeout(STEP_TIMEOUT, lines.next_line()).await;
    let result = match first {
        Ok(Ok(Some(l))) if l.starts_with(serving) => {
            let reply = flotilla_testkit::http::get("http://127.0.0.1:8001/api/fleet").await?;
            ensure!(reply.status == 200, "the fleet answered {}", reply.status);
            for name in ["\"auth\"", "\"users\"", "\"users-standby\""] {
                ensure!(
                    reply.body.contains(name),
                    "{name} missing from the fleet: {}",
                    reply.body
                );
            }
            Ok(())
        }
        other => Err(anyhow::anyhow!("the dashboard printed {other:?}")),
    };
    child.kill().await?;
    result
}
