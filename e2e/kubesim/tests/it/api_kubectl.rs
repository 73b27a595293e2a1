//! Acceptance tests with the real `kubectl` (on PATH) pointed at a kubesim kubeconfig:
//! apply (client- and server-side), get (table, YAML, watch), explain, scale, label,
//! annotate, patch, delete with garbage collection, and the Flotilla CRD with a sample
//! MicroService.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_testkit::wait::for_deletion;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, ResourceExt};
use kubesim::Cluster;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::start;

struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    fn new(cluster: &Cluster) -> Result<Self> {
        Ok(Kubectl {
            kubeconfig: cluster.kubeconfig_path().to_path_buf(),
            cache: tempfile::tempdir()?,
        })
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.cache.path())
            .env("HOME", self.cache.path())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl and returns stdout; fails with stderr when kubectl fails.
    async fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .output()
            .await
            .context("running kubectl (is it on PATH?)")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}\n{stdout}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Runs kubectl expecting failure; returns stderr.
    async fn fail(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .output()
            .await
            .context("running kubectl")?;
        if out.status.success() {
            bail!("kubectl {args:?} unexpectedly succeeded");
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn write_temp(dir: &tempfile::TempDir, name: &str, text: &str) -> Result<String> {
    let p = dir.path().join(name);
    std::fs::write(&p, text)?;
    Ok(p.display().to_string())
}

#[tokio::test]
async fn kubectl_apply_get_explain_scale_and_edit_a_custom_resource() -> Result<()> {
    // The everyday kubectl workflow on a CRD and one of its objects works end to end.
    let cluster = start().await?;
    let k = Kubectl::new(&cluster)?;
    let out = k
        .run(&["apply", "-f", &fixture("widgets.example.com.yaml")])
        .await?;
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"),
        "{out}"
    );
    let out = k
        .run(&["apply", "-f", &fixture("widget-sample.yaml")])
        .await?;
    assert!(out.contains("widget.example.com/sample created"), "{out}");
    let out = k
        .run(&["apply", "-f", &fixture("widget-sample.yaml")])
        .await?;
    assert!(out.contains("widget.example.com/sample unchanged"), "{out}");

    let table = k.run(&["get", "widgets"]).await?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, vec!["NAME", "IMAGE", "REPLICAS", "READY", "AGE"]);
    assert!(
        table.lines().nth(1).unwrap_or("").starts_with("sample"),
        "{table}"
    );
    assert!(k.run(&["get", "wdg"]).await?.contains("example/worker:1.0"));
    assert!(k
        .run(&["get", "all"])
        .await?
        .contains("widget.example.com/sample"));

    let yaml = k.run(&["get", "widget", "sample", "-o", "yaml"]).await?;
    let obj: serde_json::Value = serde_norway::from_str(&yaml)?;
    assert_eq!(obj["spec"]["tier"], "web", "defaults are visible");
    assert_eq!(obj["spec"]["replicas"], 2);

    let explain = k.run(&["explain", "widgets.spec.image"]).await?;
    assert!(
        explain.contains("Container image of the workers"),
        "{explain}"
    );

    k.run(&["scale", "widget", "sample", "--replicas=4"])
        .await?;
    assert_eq!(
        k.run(&["get", "widget", "sample", "-o", "jsonpath={.spec.replicas}"])
            .await?,
        "4"
    );

    k.run(&["label", "widget", "sample", "team=blue"]).await?;
    k.run(&["annotate", "widget", "sample", "note=hello"])
        .await?;
    k.run(&[
        "patch",
        "widget",
        "sample",
        "--type=merge",
        "-p",
        r#"{"spec":{"image":"example/worker:2.0"}}"#,
    ])
    .await?;
    k.run(&[
        "patch",
        "widget",
        "sample",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/tier","value":"batch"}]"#,
    ])
    .await?;
    let got = k.run(&["get", "widget", "sample", "-o", "jsonpath={.metadata.labels.team} {.metadata.annotations.note} {.spec.image} {.spec.tier}"]).await?;
    assert_eq!(got, "blue hello example/worker:2.0 batch");

    // Server-side apply takes the image back (it conflicts with the patch's manager, so force).
    let err = k
        .fail(&[
            "apply",
            "--server-side",
            "-f",
            &fixture("widget-sample.yaml"),
        ])
        .await?;
    assert!(err.contains("conflict"), "{err}");
    k.run(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &fixture("widget-sample.yaml"),
    ])
    .await?;
    assert_eq!(
        k.run(&["get", "widget", "sample", "-o", "jsonpath={.spec.image}"])
            .await?,
        "example/worker:1.0"
    );

    let invalid = k
        .fail(&[
            "patch",
            "widget",
            "sample",
            "--type=merge",
            "-p",
            r#"{"spec":{"tier":"gold"}}"#,
        ])
        .await?;
    assert!(invalid.contains("Unsupported value: \"gold\""), "{invalid}");
    Ok(())
}

#[tokio::test]
async fn kubectl_strategic_patch_and_deployment_table() -> Result<()> {
    // kubectl's default (strategic) patch merges containers by name on a Deployment.
    let cluster = start().await?;
    let k = Kubectl::new(&cluster)?;
    let dir = tempfile::tempdir()?;
    let file = write_temp(
        &dir,
        "dep.yaml",
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: app, image: "app:1", env: [{name: A, value: "1"}]}
      - {name: side, image: "side:1"}
"#,
    )?;
    k.run(&["apply", "-f", &file]).await?;
    k.run(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"app:2"}]}}}}"#,
    ])
    .await?;
    let images = k
        .run(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ])
        .await?;
    assert_eq!(images, "app:2 side:1");
    // Client-side apply of the original file takes the image back and keeps both containers.
    k.run(&["apply", "-f", &file]).await?;
    let images = k
        .run(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ])
        .await?;
    assert_eq!(images, "app:1 side:1");
    // `kubectl edit` with an editor that rewrites the file in place.
    let out = k
        .command(&["edit", "deployment", "web"])
        .env("KUBE_EDITOR", "sed -i s/side:1/side:2/")
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let images = k
        .run(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ])
        .await?;
    assert_eq!(images, "app:1 side:2");
    let explain = k.run(&["explain", "deployment.spec.replicas"]).await?;
    assert!(explain.contains("Number of desired pods"), "{explain}");
    let explain = k.run(&["explain", "pods.spec.containers.image"]).await?;
    assert!(explain.contains("Container image name"), "{explain}");
    k.run(&["scale", "deployment", "web", "--replicas=3"])
        .await?;
    let table = k.run(&["get", "deploy", "web"]).await?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["web", "0/3", "0", "0"], "{table}");
    let wide = k.run(&["get", "deploy", "web", "-o", "wide"]).await?;
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header[5..], ["CONTAINERS", "IMAGES", "SELECTOR"], "{wide}");
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[5..], ["app,side", "app:1,side:2", "app=web"], "{wide}");
    Ok(())
}

#[tokio::test]
async fn kubectl_get_watch_prints_changes() -> Result<()> {
    // `kubectl get -w` prints a line for a change made while it runs.
    let cluster = start().await?;
    let k = Kubectl::new(&cluster)?;
    k.run(&["apply", "-f", &fixture("widgets.example.com.yaml")])
        .await?;
    k.run(&["apply", "-f", &fixture("widget-sample.yaml")])
        .await?;
    let mut child = k
        .command(&["get", "widgets", "-w", "--no-headers"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("kubectl stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await??
        .unwrap_or_default();
    assert!(first.starts_with("sample"), "{first}");
    k.run(&[
        "patch",
        "widget",
        "sample",
        "--type=merge",
        "-p",
        r#"{"spec":{"image":"example/worker:9.9"}}"#,
    ])
    .await?;
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match lines.next_line().await? {
                Some(l) if l.contains("example/worker:9.9") => return Ok::<_, anyhow::Error>(l),
                Some(_) => continue,
                None => bail!("kubectl get -w ended"),
            }
        }
    })
    .await??;
    assert!(line.starts_with("sample"), "{line}");
    child.kill().await?;
    Ok(())
}

#[tokio::test]
async fn kubectl_delete_collects_children() -> Result<()> {
    // Deleting an owner with kubectl garbage-collects the objects it owns.
    let cluster = start().await?;
    let k = Kubectl::new(&cluster)?;
    k.run(&["apply", "-f", &fixture("widgets.example.com.yaml")])
        .await?;
    k.run(&["apply", "-f", &fixture("widget-sample.yaml")])
        .await?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(cluster.client(), "default", &ar);
    let owner = widgets.get("sample").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let child: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "sample-config",
        "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Widget", "name": "sample", "uid": owner.uid(), "controller": true}]}}))?;
    cms.create(&PostParams::default(), &child).await?;
    let out = k.run(&["delete", "widget", "sample"]).await?;
    assert!(
        out.contains("widget.example.com \"sample\" deleted"),
        "{out}"
    );
    for_deletion(&cms, "sample-config", Duration::from_secs(30)).await?;
    let err = k.fail(&["get", "widget", "sample"]).await?;
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_applies_the_flotilla_crd_and_a_microservice() -> Result<()> {
    // The project's own CRD and sample manifest apply cleanly, client- and server-side.
    let crd = repo_file("crds/microservices.flotilla.rs.yaml");
    let sample = repo_file("services/deploy/users.yaml");
    let cluster = start().await?;
    let k = Kubectl::new(&cluster)?;
    k.run(&["apply", "-f", &crd.display().to_string()]).await?;
    let out = k
        .run(&["apply", "--server-side", "-f", &crd.display().to_string()])
        .await?;
    assert!(out.contains("serverside-applied"), "{out}");
    // The samples' Secrets are generated, as their README says (stringData, stored as data).
    let generated = std::process::Command::new("bash")
        .arg(repo_file("services/deploy/secrets.sh"))
        .output()?;
    assert!(generated.status.success(), "secrets.sh failed");
    let secrets = tempfile::NamedTempFile::new()?;
    std::fs::write(secrets.path(), &generated.stdout)?;
    let out = k
        .run(&["create", "-f", &secrets.path().display().to_string()])
        .await?;
    assert!(out.contains("secret/users-secrets created"), "{out}");
    let out = k
        .run(&["apply", "-f", &sample.display().to_string()])
        .await?;
    assert!(
        out.contains("microservice.flotilla.rs/users created"),
        "{out}"
    );
    k.run(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &sample.display().to_string(),
    ])
    .await?;
    let table = k.run(&["get", "msvc"]).await?;
    assert!(
        table.lines().nth(1).unwrap_or("").starts_with("users"),
        "{table}"
    );
    let explain = k.run(&["explain", "microservices.spec"]).await?;
    assert!(explain.contains("image"), "{explain}");
    let secret = k
        .run(&[
            "get",
            "secret",
            "users-secrets",
            "-o",
            "jsonpath={.data.admin-token}",
        ])
        .await?;
    assert!(!secret.is_empty(), "stringData is stored as data");
    k.run(&["delete", "-f", &sample.display().to_string()])
        .await?;
    Ok(())
}

#[tokio::test]
async fn kubectl_create_generators_for_namespaces_configmaps_and_secrets() -> Result<()> {
    // `kubectl create namespace|configmap|secret` send protobuf bodies, which kubesim decodes
    // for these kinds; other generators get 415 rather than a wrong object.
    let cluster = start().await?;
    let k = Kubectl::new(&cluster)?;
    k.run(&["create", "namespace", "demo"]).await?;
    k.run(&[
        "-n",
        "demo",
        "create",
        "configmap",
        "settings",
        "--from-literal=LOG_LEVEL=debug",
    ])
    .await?;
    k.run(&[
        "-n",
        "demo",
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=token=s3cret",
    ])
    .await?;
    assert_eq!(
        k.run(&[
            "-n",
            "demo",
            "get",
            "cm",
            "settings",
            "-o",
            "jsonpath={.data.LOG_LEVEL}"
        ])
        .await?,
        "debug"
    );
    assert_eq!(
        k.run(&[
            "-n",
            "demo",
            "get",
            "secret",
            "creds",
            "-o",
            "jsonpath={.data.token}"
        ])
        .await?,
        "czNjcmV0"
    );
    assert_eq!(
        k.run(&["get", "ns", "demo", "-o", "jsonpath={.status.phase}"])
            .await?,
        "Active"
    );
    let err = k
        .fail(&["-n", "demo", "create", "deployment", "web", "--image=nginx"])
        .await?;
    assert!(
        err.contains("protobuf bodies are supported only for"),
        "{err}"
    );
    Ok(())
}
