//! Checks of the shell scripts and the kind path, which cannot run here (no Docker): they parse
//! (`bash -n`), pass `shellcheck`, and name files that exist.

use anyhow::{ensure, Context, Result};
use flotilla_e2e::{chart, tools};

/// The scripts this crate ships.
const SCRIPTS: &[&str] = &["e2e/install-tools.sh", "e2e/kind/run.sh"];

#[test]
fn scripts_parse_and_pass_shellcheck() -> Result<()> {
    // A syntax error or a shellcheck finding in a script fails here rather than on a user's
    // machine.
    let bash = tools::find("bash")?;
    let shellcheck = tools::find("shellcheck")?;
    for script in SCRIPTS {
        let path = tools::repo_root().join(script);
        ensure!(path.is_file(), "{script} is missing");
        tools::run_ok(&bash, ["-n".as_ref(), path.as_os_str()], None)
            .with_context(|| format!("bash -n {script}"))?;
        tools::run_ok(&shellcheck, [path.as_os_str()], None)
            .with_context(|| format!("shellcheck {script}"))?;
    }
    Ok(())
}

#[test]
fn kind_script_names_files_that_exist() -> Result<()> {
    // Every Dockerfile, chart and config the kind script uses is in the repository.
    let root = tools::repo_root();
    let script = std::fs::read_to_string(root.join("e2e/kind/run.sh"))?;
    for path in [
        "operator/Dockerfile",
        "services/users/Dockerfile",
        "services/auth/Dockerfile",
        "charts/flotilla",
        "charts/flotilla-samples",
        "e2e/kind/kind-config.yaml",
    ] {
        ensure!(script.contains(path), "run.sh does not use {path}");
        ensure!(
            root.join(path).exists(),
            "{path} (used by run.sh) is missing"
        );
    }
    Ok(())
}

#[test]
fn kind_node_matches_the_validated_kubernetes_version() -> Result<()> {
    // The kind cluster runs the Kubernetes minor version the chart output is validated against.
    let root = tools::repo_root();
    let config: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(
        root.join("e2e/kind/kind-config.yaml"),
    )?)?;
    ensure!(config.get("kind").and_then(|k| k.as_str()) == Some("Cluster"));
    let image = config
        .pointer("/nodes/0/image")
        .and_then(|i| i.as_str())
        .context("kind config pins no node image")?;
    let minor = chart::KUBE_VERSION
        .rsplit_once('.')
        .map(|(minor, _)| minor)
        .context("KUBE_VERSION has no patch part")?;
    ensure!(
        image.starts_with(&format!("kindest/node:v{minor}.")),
        "kind node {image} is not Kubernetes {minor}"
    );
    Ok(())
}
