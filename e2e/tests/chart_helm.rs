//! The README's "Helm path on kubesim", as written: `kubesim up`, the CRD, `helm install` of the
//! operator chart (the operator runs as a pod under the chart's ServiceAccount and RBAC over
//! TLS) and of the samples, both MicroServices Ready, `helm test` (the chart's kubectl pod,
//! in-cluster), then `helm uninstall` of both leaves none of the releases' objects behind.
//!
//! The only additions to the README's commands are a private state directory and address ranges
//! so parallel clusters do not collide. Needs root (kubesim mounts the ServiceAccount token at
//! its real path) and helm (`e2e/install-tools.sh`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_e2e::walkthrough::kubesim_up;
use flotilla_testkit::paths::repo_root;
use tokio::process::Command;

const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Each helm/kubectl step on a loaded 2-core machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs one walkthrough command; its stdout, or an error with its output.
async fn step(program: &Path, args: &[&str], kubeconfig: &Path, home: &Path) -> Result<String> {
    println!("$ {} {}", program.display(), args.join(" "));
    let run = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .current_dir(repo_root())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(STEP_TIMEOUT, run)
        .await
        .with_context(|| format!("{args:?} timed out"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{} {args:?} failed:\n{stdout}\n{}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[tokio::test]
async fn the_readme_helm_walkthrough_works_on_kubesim() -> Result<()> {
    if !is_root() {
        eprintln!("not run: the in-cluster operator needs kubesim to run as root (see README)");
        return Ok(());
    }
    let helm = flotilla_e2e::tools::find("helm")?;
    let kubectl = PathBuf::from("kubectl");
    let state = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let (mut kubesim, kubeconfig) = kubesim_up(&[], state.path(), 245, UP_TIMEOUT).await?;
    let (k, h, kc) = (&kubectl, home.path(), kubeconfig.as_path());
    let result = async {
        step(
            k,
            &[
                "apply",
                "--server-side",
                "-f",
                "crds/microservices.flotilla.rs.yaml",
            ],
            kc,
            h,
        )
        .await?;
        step(
            &helm,
            &[
                "install",
                "flotilla",
                "charts/flotilla",
                "--namespace",
                "flotilla-system",
                "--create-namespace",
                "--wait",
            ],
            kc,
            h,
        )
        .await?;
        step(
            &helm,
            &[
                "install",
                "samples",
                "charts/flotilla-samples",
                "--namespace",
                "shop",
                "--create-namespace",
            ],
            kc,
            h,
        )
        .await?;
        step(
            k,
            &[
                "-n",
                "shop",
                "wait",
                "--for=condition=Ready",
                "msvc/users",
                "msvc/auth",
                "--timeout=120s",
            ],
            kc,
            h,
        )
        .await?;
        let lease = step(
            k,
            &[
                "-n",
                "flotilla-system",
                "get",
                "lease",
                "flotilla-operator",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            kc,
            h,
        )
        .await?;
        if !lease.starts_with("flotilla-") {
            bail!("the in-cluster operator does not hold the Lease: {lease:?}");
        }
        let test = step(
            &helm,
            &["test", "flotilla", "--namespace", "flotilla-system"],
            kc,
            h,
        )
        .await?;
        if !test.contains("Phase:          Succeeded") {
            bail!("helm test did not succeed:\n{test}");
        }
        step(
            &helm,
            &["uninstall", "samples", "--namespace", "shop"],
            kc,
            h,
        )
        .await?;
        step(
            &helm,
            &["uninstall", "flotilla", "--namespace", "flotilla-system"],
            kc,
            h,
        )
        .await?;
        // Deletion finishes asynchronously (pods terminate with their grace period).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let left = step(
                k,
                &[
                    "get",
                    "deploy,rs,pods,svc,secret,role,rolebinding,msvc",
                    "-A",
                    "-o",
                    "name",
                    "-l",
                    "app.kubernetes.io/managed-by=Helm",
                ],
                kc,
                h,
            )
            .await?
                + &step(
                    k,
                    &["get", "pods,secrets,msvc", "-n", "shop", "-o", "name"],
                    kc,
                    h,
                )
                .await?
                + &step(
                    k,
                    &[
                        "get",
                        "deploy,pods,secrets",
                        "-n",
                        "flotilla-system",
                        "-o",
                        "name",
                    ],
                    kc,
                    h,
                )
                .await?;
            let cluster = step(
                k,
                &["get", "clusterrole,clusterrolebinding", "-o", "name"],
                kc,
                h,
            )
            .await?;
            let cluster_left: Vec<&str> =
                cluster.lines().filter(|l| l.contains("flotilla")).collect();
            if left.trim().is_empty() && cluster_left.is_empty() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("helm uninstall left objects behind:\n{left}\n{cluster_left:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        step(k, &["get", "crd", "microservices.flotilla.rs"], kc, h).await?;
        anyhow::Ok(())
    }
    .await;
    let _ = kubesim.start_kill();
    let _ = kubesim.wait().await;
    if result.is_err() {
        let log = std::fs::read_dir(state.path().join("logs/flotilla-system"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path().join("operator.log"))
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect::<Vec<_>>()
            .join("\n");
        eprintln!("operator log:\n{log}");
    }
    result
}
