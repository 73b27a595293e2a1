//! `flotilla-operator render -f` on the sample manifests prints valid Kubernetes objects: every
//! document passes `kubernetes-validate` strictly, and each MicroService yields its Deployment,
//! Service and ConfigMap (and an HPA where autoscaling is asked for).

use std::process::Command;

use anyhow::{ensure, Context, Result};
use flotilla_e2e::chart::{kind_of, kubernetes_validate, split_documents};
use flotilla_e2e::tools::repo_root;
use flotilla_testkit::paths::workspace_binary;

/// Renders one manifest file with the operator binary and returns its YAML output.
fn render(file: &str) -> Result<String> {
    let operator = workspace_binary("flotilla-operator", "flotilla-operator")?;
    let path = repo_root().join(file);
    let out = Command::new(operator)
        .args(["render", "-f"])
        .arg(&path)
        .output()
        .context("running flotilla-operator render")?;
    ensure!(
        out.status.success(),
        "render -f {file} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn check(file: &str, want: &[&str]) -> Result<()> {
    let yaml = render(file)?;
    let docs = split_documents(&yaml)?;
    let mut kinds: Vec<&str> = docs.iter().map(kind_of).collect();
    kinds.sort_unstable();
    let mut expected = want.to_vec();
    expected.sort_unstable();
    ensure!(
        kinds == expected,
        "{file} rendered {kinds:?}, expected {expected:?}"
    );
    let report = kubernetes_validate(&yaml)?;
    ensure!(
        report.errors.is_empty(),
        "kubernetes-validate rejected the rendering of {file}:\n{}",
        report.errors.join("\n")
    );
    ensure!(
        report.passed.len() == docs.len(),
        "only {:?} of {} objects passed",
        report.passed,
        docs.len()
    );
    Ok(())
}

#[test]
fn rendered_samples_are_valid_kubernetes_objects() -> Result<()> {
    check(
        "services/deploy/users.yaml",
        &["ConfigMap", "Deployment", "Service"],
    )?;
    check(
        "services/deploy/auth.yaml",
        &["ConfigMap", "Deployment", "Service"],
    )
}

#[test]
fn autoscaling_renders_a_valid_hpa() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("scaled.yaml");
    std::fs::write(
        &file,
        "apiVersion: flotilla.rs/v1alpha1\nkind: MicroService\nmetadata: {name: scaled}\n\
         spec:\n  image: flotilla/users:0.1.0\n  config: {A: \"1\"}\n  autoscaling:\n    \
         minReplicas: 2\n    maxReplicas: 5\n    targetCPUUtilizationPercentage: 70\n",
    )?;
    check(
        file.to_str().context("temp path is not UTF-8")?,
        &[
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Service",
        ],
    )
}
