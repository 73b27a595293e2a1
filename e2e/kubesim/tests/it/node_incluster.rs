//! Pods run in-cluster as on a real node: the `kubernetes` Service reaches the secure API
//! server, `KUBERNETES_SERVICE_HOST`/`_PORT` are set, and the pod's ServiceAccount token,
//! `ca.crt` and `namespace` are mounted at `/var/run/secrets/kubernetes.io/serviceaccount`, so
//! the machine's real kubectl, run as the image `registry.k8s.io/kubectl`, works from inside a
//! pod with exactly the RBAC its ServiceAccount has. Volumes appear at their spec paths (as
//! root, through a private mount namespace per container).

use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_testkit::wait::poll;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, PostParams};
use kubesim::node::ImageTable;
use serde_json::json;

use crate::support::node::Sim;

/// A secure cluster whose node runs the machine's kubectl as `registry.k8s.io/kubectl` and
/// `/bin/sh` as `kubesim/sh`.
async fn start() -> Result<Sim> {
    let mut images = ImageTable::default();
    images.prepend("registry.k8s.io/kubectl:*", "kubectl");
    images.prepend("kubesim/sh:*", "/bin/sh");
    Sim::start_with(true, images).await
}

/// Runs `pod` to completion; returns its phase (`Succeeded` or `Failed`) and its log.
async fn run_pod(sim: &Sim, pod: serde_json::Value) -> Result<(String, String)> {
    let pod: Pod = serde_json::from_value(pod)?;
    let name = pod.metadata.name.clone().context("pod name")?;
    sim.pods().create(&PostParams::default(), &pod).await?;
    let what = format!("pod {name} to finish");
    let phase = poll(&what, Duration::from_secs(60), || async {
        let p = sim.pods().get(&name).await?;
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        Ok((phase == "Succeeded" || phase == "Failed").then_some(phase))
    })
    .await?;
    let opts = kubesim::node::LogOptions::default();
    let log = kubesim::node::read_pod_log(sim.state.path(), "default", &name, &opts)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok((phase, log))
}

fn kubectl_pod(name: &str, automount: Option<bool>) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": automount,
            "containers": [{"name": "kubectl", "image": "registry.k8s.io/kubectl:v1.32.4",
                "args": ["get", "serviceaccounts", "-o", "name"]}],
        },
    })
}

#[tokio::test]
async fn kubectl_in_a_pod_reaches_the_api_server_with_its_service_account() -> Result<()> {
    let sim = start().await?;
    // Without a binding the default ServiceAccount is authenticated but may not list.
    let (phase, log) = run_pod(&sim, kubectl_pod("denied", None)).await?;
    assert_eq!(phase, "Failed", "{log}");
    assert!(
        log.contains(r#"User "system:serviceaccount:default:default" cannot list resource "serviceaccounts" in API group "" in the namespace "default""#),
        "{log}"
    );
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "default-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}],
    }))?;
    Api::<RoleBinding>::namespaced(sim.cluster.client(), "default")
        .create(&PostParams::default(), &binding)
        .await?;
    let (phase, log) = run_pod(&sim, kubectl_pod("allowed", None)).await?;
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(log.contains("serviceaccount/default"), "{log}");
    // automountServiceAccountToken: false leaves kubectl without in-cluster credentials.
    let (phase, log) = run_pod(&sim, kubectl_pod("no-token", Some(false))).await?;
    assert_eq!(phase, "Failed", "{log}");
    sim.shutdown().await;
    Ok(())
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[tokio::test]
async fn volumes_and_the_service_account_appear_at_their_spec_paths() -> Result<()> {
    if !is_root() {
        eprintln!("not run: mounting volumes at their spec paths needs root (see README)");
        return Ok(());
    }
    let sim = start().await?;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "greeting"}, "data": {"hello": "from a configmap"},
    }))?;
    Api::<ConfigMap>::namespaced(sim.cluster.client(), "default")
        .create(&PostParams::default(), &cm)
        .await?;
    let script = "cat /etc/kubesim-mount-test/hello; echo; \
        cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; \
        head -c 20 /var/run/secrets/kubernetes.io/serviceaccount/ca.crt; echo; \
        echo host=$KUBERNETES_SERVICE_HOST port=$KUBERNETES_SERVICE_PORT";
    let (phase, log) = run_pod(
        &sim,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "mounts", "namespace": "default"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "greeting", "configMap": {"name": "greeting"}}],
                "containers": [{"name": "sh", "image": "kubesim/sh:1", "args": ["-c", script],
                    "volumeMounts": [{"name": "greeting", "mountPath": "/etc/kubesim-mount-test"}]}],
            },
        }))
        .await?;
    assert_eq!(phase, "Succeeded", "{log}");
    let lines: Vec<&str> = log.lines().collect();
    let (ip, port) = sim
        .cluster
        .kubernetes_service()
        .context("kubernetes Service")?;
    assert_eq!(
        lines,
        vec![
            "from a configmap",
            "default",
            "-----BEGIN CERTIFICA",
            &format!("host={ip} port={port}"),
        ],
        "{log}"
    );
    // The mount was private to the container.
    assert!(!std::path::Path::new("/etc/kubesim-mount-test/hello").exists());
    sim.shutdown().await;
    Ok(())
}
