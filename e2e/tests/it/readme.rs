//! The README's "Run it" session, as a newcomer types it: `kubesim up --operator --demo`, then
//! the kubectl and curl commands the README lists, against the kubeconfig kubesim printed; then
//! the "Guarded rollouts" session on the same cluster, each line run with bash exactly as the
//! README writes it; then the plugin's "A release and an incident, step by step" on the same
//! cluster (`readme/day_two.rs`).
//!
//! The only additions to the README's command are a private state directory and address ranges,
//! so this test does not collide with other clusters running in parallel.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use flotilla_e2e::walkthrough::kubesim_up;
use flotilla_testkit::cluster::client_from_kubeconfig;
use flotilla_testkit::paths::{tail, workspace_binary};
use flotilla_testkit::wait::poll;
use flotilla_testkit::{dump, http};
use tokio::process::Command;

mod day_two;

/// Building nothing, installing the CRD and starting two services and the operator on a loaded
/// 2-core machine.
const UP_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs kubectl with the kubeconfig; its stdout on success, an error with stderr otherwise.
pub(crate) async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    run(kubeconfig, "kubectl", args).await
}

/// Runs `program` with `args` against the kubeconfig; its stdout on success, an error with
/// stderr otherwise.
pub(crate) async fn run(kubeconfig: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out = output(kubeconfig, program, args).await?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program` with `args` against the kubeconfig, with the workspace's `kubectl-flotilla`
/// first on the PATH (where `cargo install --path kubectl-flotilla` would put the same build).
pub(crate) async fn output(
    kubeconfig: &Path,
    program: &str,
    args: &[&str],
) -> Result<std::process::Output> {
    command(kubeconfig, program, args)?
        .output()
        .await
        .with_context(|| format!("running {program} (is it on PATH?)"))
}

/// `program` with `args` as the README's commands run: against the kubeconfig, from the
/// repository's root, with the workspace's `kubectl-flotilla` first on the PATH.
pub(crate) fn command(kubeconfig: &Path, program: &str, args: &[&str]) -> Result<Command> {
    let plugin = workspace_binary("kubectl-flotilla", "kubectl-flotilla")?;
    let mut path = vec![plugin
        .parent()
        .context("the plugin binary has no directory")?
        .to_path_buf()];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut c = Command::new(program);
    c.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("PATH", std::env::join_paths(path)?)
        .current_dir(flotilla_testkit::paths::repo_root());
    Ok(c)
}

async fn wait_ready(kubeconfig: &Path, name: &str) -> Result<()> {
    let jsonpath = "-o=jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    poll(
        &format!("MicroService {name} Ready"),
        UP_TIMEOUT,
        || async {
            let status = kubectl(kubeconfig, &["get", "msvc", name, jsonpath]).await?;
            if status.trim() == "True" {
                Ok(Some(()))
            } else {
                bail!("Ready is {status:?}")
            }
        },
    )
    .await
}

#[tokio::test]
async fn the_run_it_session_works_as_written() -> Result<()> {
    let state = tempfile::tempdir()?;
    let (mut kubesim, kubeconfig) =
        kubesim_up(&["--operator", "--demo"], state.path(), 250, UP_TIMEOUT).await?;
    let result = session(&kubeconfig).await;
    if result.is_err() {
        let log = state.path().join("operator.log");
        eprintln!("===== operator log (last 40 lines)\n{}", tail(&log, 40));
        match client_from_kubeconfig(&kubeconfig).await {
            Ok(client) => eprintln!("{}", dump::namespace_report(&client, "default").await),
            Err(err) => eprintln!("no report: {err:#}"),
        }
    }
    // Ctrl-C stops kubesim and every pod process.
    if let Some(pid) = kubesim.id() {
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await;
    }
    let status = tokio::time::timeout(Duration::from_secs(60), kubesim.wait()).await;
    result?;
    let status = status.context("kubesim did not stop after SIGINT")??;
    assert!(status.success(), "kubesim exited with {status}");
    Ok(())
}

async fn session(kubeconfig: &Path) -> Result<()> {
    wait_ready(kubeconfig, "users").await?;
    wait_ready(kubeconfig, "auth").await?;

    // $ kubectl get msvc,deploy,pods,svc
    let listing = kubectl(kubeconfig, &["get", "msvc,deploy,pods,svc"]).await?;
    for name in [
        "microservice.flotilla.rs/users",
        "deployment.apps/auth",
        "service/users",
    ] {
        assert!(listing.contains(name), "{name} missing from:\n{listing}");
    }

    // $ kubectl get msvc users -o yaml
    let yaml = kubectl(kubeconfig, &["get", "msvc", "users", "-o", "yaml"]).await?;
    assert!(yaml.contains("observedGeneration"), "{yaml}");

    // $ USERS=$(kubectl get svc users -o jsonpath='{.spec.clusterIP}')
    // $ curl -s http://$USERS:8080/readyz
    let ip = kubectl(
        kubeconfig,
        &["get", "svc", "users", "-o", "jsonpath={.spec.clusterIP}"],
    )
    .await?;
    let url = format!("http://{}:8080/readyz", ip.trim());
    poll(
        "users /readyz through the cluster IP",
        UP_TIMEOUT,
        || async {
            let reply = http::get(&url).await?;
            if (200..300).contains(&reply.status) {
                Ok(Some(()))
            } else {
                bail!("{url} answered {}", reply.status)
            }
        },
    )
    .await?;

    // $ kubectl scale msvc users --replicas 3
    kubectl(kubeconfig, &["scale", "msvc", "users", "--replicas", "3"]).await?;
    poll("users at 3 ready replicas", UP_TIMEOUT, || async {
        let ready = kubectl(
            kubeconfig,
            &[
                "get",
                "msvc",
                "users",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
        )
        .await?;
        if ready.trim() == "3" {
            Ok(Some(()))
        } else {
            bail!("readyReplicas is {ready:?}")
        }
    })
    .await?;

    // $ kubectl explain microservice.spec.failover
    let explain = kubectl(kubeconfig, &["explain", "microservice.spec.failover"]).await?;
    assert!(explain.contains("fallback"), "{explain}");

    guarded_rollouts(kubeconfig).await
}

/// The README's "Guarded rollouts" session, continuing the one above (users at 3 replicas): a
/// healthy release promoted after its canary's analysis, then an unpullable one rolled back.
async fn guarded_rollouts(kubeconfig: &Path) -> Result<()> {
    as_written(
        kubeconfig,
        r#"kubectl patch msvc users --type merge -p '{"spec":{"rollout":{"strategy":"Guarded","analysisSeconds":10}}}'"#,
    )
    .await?;
    as_written(
        kubeconfig,
        r#"kubectl patch msvc users --type merge -p '{"spec":{"image":"flotilla/users:0.2.0"}}'"#,
    )
    .await?;
    let met = as_written(
        kubeconfig,
        "kubectl wait msvc/users --for=jsonpath='{.status.rollout.phase}'=Analyzing --timeout=60s",
    )
    .await?;
    assert!(met.contains("condition met"), "{met}");
    let deploys = as_written(kubeconfig, "kubectl get deploy users users-canary").await?;
    assert!(
        deploys.lines().any(|l| l.starts_with("users-canary ")),
        "{deploys}"
    );
    as_written(
        kubeconfig,
        "kubectl wait msvc/users --for=jsonpath='{.status.rollout.phase}'=Promoted --timeout=120s",
    )
    .await?;
    let image =
        r#"kubectl get deploy users -o jsonpath='{.spec.template.spec.containers[0].image}{"\n"}'"#;
    assert_eq!(
        as_written(kubeconfig, image).await?,
        "flotilla/users:0.2.0\n"
    );

    as_written(
        kubeconfig,
        r#"kubectl patch msvc users --type merge -p '{"spec":{"image":"flotilla/userz:0.3.0"}}'"#,
    )
    .await?;
    as_written(
        kubeconfig,
        "kubectl wait msvc/users --for=jsonpath='{.status.rollout.phase}'=RolledBack --timeout=120s",
    )
    .await?;
    let row = as_written(kubeconfig, "kubectl get msvc users").await?;
    assert!(
        row.contains("RolledBack") && row.contains("flotilla/userz:0.3.0"),
        "{row}"
    );
    let why = as_written(
        kubeconfig,
        r#"kubectl get msvc users -o jsonpath='{.status.rollout.reason}: {.status.rollout.evidence[0].observation}{"\n"}'"#,
    )
    .await?;
    assert!(
        why.starts_with("CanaryNotReady: ") && why.contains("ImagePull"),
        "{why}"
    );
    assert_eq!(
        as_written(kubeconfig, image).await?,
        "flotilla/users:0.2.0\n"
    );
    let events = as_written(
        kubeconfig,
        "kubectl get events --field-selector involvedObject.name=users",
    )
    .await?;
    let started = events.matches("RolloutStarted").count();
    assert!(
        started == 2 && events.contains("Promoted") && events.contains("RolledBack"),
        "{events}"
    );
    the_plugin(kubeconfig).await
}

/// The README's plugin lines, right after the rolled-back release: `status` exits 1 naming the
/// rollback, `get` draws the tree (at least the three stable pods: a pod of the promotion's
/// rolling update may still be starting).
async fn the_plugin(kubeconfig: &Path) -> Result<()> {
    let out = as_written_output(kubeconfig, "kubectl flotilla status users --timeout 2m").await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1)
            && stderr.starts_with("error: users: revision ")
            && stderr.contains(" was rolled back: CanaryNotReady (")
            && stderr.lines().count() == 1,
        "{out:?}"
    );
    let tree = as_written(kubeconfig, "kubectl flotilla get users").await?;
    let lines: Vec<&str> = tree.lines().collect();
    ensure!(
        lines.first() == Some(&"MicroService default/users")
            && lines
                .iter()
                .any(|l| l.starts_with("  rollout: RolledBack · stable revision "))
            && lines
                .iter()
                .any(|l| l.starts_with("├── Deployment users (stable, revision "))
            && lines
                .iter()
                .filter(|l| l.starts_with("│   ") && l.contains("── Pod users-"))
                .count()
                >= 3,
        "{tree}"
    );
    day_two::steps(kubeconfig).await
}

/// Runs a `$ ` line of the README's console blocks exactly as written (with bash, against
/// `kubeconfig`); its stdout. Fails when the README has no such line, so the two cannot drift.
pub(crate) async fn as_written(kubeconfig: &Path, line: &str) -> Result<String> {
    in_readme(line)?;
    run(kubeconfig, "bash", &["-c", line]).await
}

/// Fails when the README's console blocks have no line `$ {line}`.
pub(crate) fn in_readme(line: &str) -> Result<()> {
    let readme = include_str!("../../../README.md");
    if !readme.lines().any(|l| l.strip_prefix("$ ") == Some(line)) {
        bail!("README.md has no console line `$ {line}`");
    }
    Ok(())
}

/// Like [`as_written`], for a line whose exit status is part of what the README shows: the
/// whole output, whatever the status.
pub(crate) async fn as_written_output(
    kubeconfig: &Path,
    line: &str,
) -> Result<std::process::Output> {
    in_readme(line)?;
    output(kubeconfig, "bash", &["-c", line]).await
}
