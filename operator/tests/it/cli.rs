//! The `flotilla-operator` binary: `crd` prints the committed CRD, `render` prints the children
//! of sample manifests and rejects invalid ones with a non-zero exit.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde::Deserialize;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flotilla-operator"))
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn kinds(yaml: &str) -> Vec<String> {
    serde_norway::Deserializer::from_str(yaml)
        .filter_map(|d| serde_norway::Value::deserialize(d).ok())
        .filter_map(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
        .collect()
}

#[test]
fn crd_output_equals_committed_manifest() -> Result<()> {
    // The committed CRD manifest is exactly what `flotilla-operator crd` prints.
    let out = bin().arg("crd").output()?;
    assert!(out.status.success());
    let committed = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/microservices.flotilla.rs.yaml"),
    )?;
    assert!(
        String::from_utf8(out.stdout)? == committed,
        "crds/microservices.flotilla.rs.yaml is stale: regenerate with `flotilla-operator crd`"
    );
    Ok(())
}

#[test]
fn render_prints_children_of_every_manifest() -> Result<()> {
    // Each MicroService renders to its Deployment and Service, plus ConfigMap and HPA when asked.
    let out = bin()
        .args(["render", "-f"])
        .arg(fixture("services.yaml"))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout)?;
    assert_eq!(
        kinds(&yaml),
        [
            "Deployment",
            "Service",
            "ConfigMap",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler"
        ]
    );
    assert!(yaml.contains("http://users.shop.svc.cluster.local:80"));
    assert!(yaml.contains("serves.flotilla.rs/auth"));
    Ok(())
}

#[test]
fn render_reads_stdin() -> Result<()> {
    // `-f -` reads the manifests from standard input.
    let mut child = bin()
        .args(["render", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"apiVersion: flotilla.rs/v1alpha1\nkind: MicroService\nmetadata: {name: a}\nspec: {image: x}\n")?;
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    assert_eq!(
        kinds(&String::from_utf8(out.stdout)?),
        ["Deployment", "Service"]
    );
    Ok(())
}

#[test]
fn render_rejects_invalid_documents() -> Result<()> {
    // An invalid document fails the command with an error naming document and field.
    let out = bin()
        .args(["render", "-f"])
        .arg(fixture("invalid.yaml"))
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("document 2: spec.autoscaling: minReplicas"),
        "unexpected error output: {err}"
    );
    assert!(out.stdout.is_empty());
    Ok(())
}

#[test]
fn help_explains_every_command() -> Result<()> {
    // --help works for the binary and each subcommand.
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["crd", "--help"],
        vec!["render", "--help"],
    ] {
        let out = bin().args(&args).output()?;
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
    Ok(())
}

#[test]
fn render_accepts_the_sample_manifests() -> Result<()> {
    // The sample services' manifests render to a Deployment, a Service and a ConfigMap each
    // (their Secrets are skipped with a warning).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../services/deploy");
    for name in ["users.yaml", "auth.yaml"] {
        let out = bin().args(["render", "-f"]).arg(dir.join(name)).output()?;
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got = kinds(&String::from_utf8(out.stdout)?);
        got.sort();
        assert!(got.contains(&"Deployment".to_string()), "{name}: {got:?}");
        assert!(got.contains(&"Service".to_string()), "{name}: {got:?}");
    }
    Ok(())
}
