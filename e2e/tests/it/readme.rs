//! The README's "Run it" session, as a newcomer types it: `kubesim up --operator --demo`, then
//! the kubectl and curl commands the README lists, against the kubeconfig kubesim printed; then
//! the "Guarded rollouts" session on the same cluster, each line run with bash exactly as the
//! README writes it.
//!
//! The only additions to the README's command are a private state directory and address ranges,
//! so this test does not collide with other clusters running in parallel.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_e2e::walkthrough::kubesim_up;
use flotilla_testkit::cluster::client_from_kubeconfig;
use flotilla_testkit::paths::tail;
use flotilla_testkit::wait::poll;
use flotilla_testkit::{dump, http};
use tokio::process::Command;

/// Building nothing, installing the CRD and starting two services and the operator on a loaded
/// 2-core machine.
const UP_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs kubectl with the kubeconfig; its stdout on success, an error with stderr otherwise.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    run(kubeconfig, "kubectl", args).await
}

/// Runs `program` with `args` against the kubeconfig; its stdout on success, an error with
/// stderr otherwise.
async fn run(kubeconfig: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .with_context(|| format!("running {program} (is it on PATH?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
    Ok(())
}

/// Runs a `$ ` line of the README's console blocks exactly as written (with bash, against
/// `kubeconfig`); its stdout. Fails when the README has no such line, so the two cannot drift.
async fn as_written(kubeconfig: &Path, line: &str) -> Result<String> {
    let readme = include_str!("../../../README.md");
    if !readme.lines().any(|l| l.strip_prefix("$ ") == Some(line)) {
        bail!("README.md has no console line `$ {line}`");
    }
    run(kubeconfig, "bash", &["-c", line]).await
}
