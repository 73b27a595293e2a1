//! Checks of the shell scripts and the kind path, which cannot run here (no Docker): they parse
//! (`bash -n`), pass `shellcheck`, and name files that exist. What the image build script prints
//! and refuses is checked in `images`.

use anyhow::{ensure, Context, Result};
use flotilla_e2e::{chart, tools};

/// The scripts this crate ships.
const SCRIPTS: &[&str] = &["e2e/install-tools.sh", "e2e/kind/run.sh", "images/build.sh"];

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
    // Every Dockerfile, chart and config the kind script uses (the Dockerfiles through the image
    // build script) is in the repository.
    let root = tools::repo_root();
    let uses = [
        (
            "images/build.sh",
            &["operator/Dockerfile", "services/Dockerfile"][..],
        ),
        (
            "e2e/kind/run.sh",
            &[
                "images/build.sh",
                "charts/flotilla",
                "charts/flotilla-samples",
                "e2e/kind/kind-config.yaml",
            ][..],
        ),
    ];
    for (user, paths) in uses {
        let script = std::fs::read_to_string(root.join(user))?;
        for path in paths {
            ensure!(script.contains(path), "{user} does not use {path}");
            ensure!(
                root.join(path).exists(),
                "{path} (used by {user}) is missing"
            );
        }
    }
    Ok(())
}

/// The import that marks a test module built on `run_test` (split so this file does not match).
const USES_RUN_TEST: &str = concat!("use flotilla_e2e::", "env::run_test;");

#[test]
fn kind_script_runs_every_e2e_module_that_can_use_a_real_cluster() -> Result<()> {
    // Every test module built on `run_test` (which honours FLOTILLA_E2E_KUBECONFIG) runs on
    // kind too, so a new end-to-end module cannot be left out of the real-cluster run.
    let root = tools::repo_root();
    let script = std::fs::read_to_string(root.join("e2e/kind/run.sh"))?;
    ensure!(
        script.contains("--test it"),
        "run.sh does not run the e2e test binary `it`"
    );
    let mut targets = Vec::new();
    for entry in std::fs::read_dir(root.join("e2e/tests/it"))? {
        let path = entry?.path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs")
            && std::fs::read_to_string(&path)?.contains(USES_RUN_TEST)
        {
            targets.push(name.to_owned());
        }
    }
    ensure!(!targets.is_empty(), "no test module uses run_test");
    for target in &targets {
        ensure!(
            script.contains(&format!("test(/^{target}::/)")),
            "run.sh does not run the e2e test module {target}"
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
