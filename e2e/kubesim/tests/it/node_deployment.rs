//! Deployments come alive: pods run as real processes, scale, roll and stop.

use std::time::Duration;

use flotilla_testkit::wait::poll;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

use crate::support::node::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn deployment_scales_to_three_ready_pods_that_serve_http() -> anyhow::Result<()> {
    // Three replicas become three Ready pods, each answering on its own pod IP, and the
    // Deployment's status reports them available.
    let sim = Sim::start().await?;
    sim.deployments()
        .create(&PostParams::default(), &deployment("web", 3, IMAGE))
        .await?;
    let pods = poll("3 ready pods", WAIT, || async {
        let pods = live_pods(&sim, "web").await?;
        Ok((pods.len() == 3 && pods.iter().all(is_ready)).then_some(pods))
    })
    .await?;
    for pod in &pods {
        let (code, body) = http_get(pod_addr(pod)?, "/").await?;
        assert_eq!(code, 200);
        assert_eq!(
            body.trim(),
            format!("pod={}", pod.metadata.name.as_deref().unwrap_or_default())
        );
    }
    let status = poll("deployment status", WAIT, || async {
        let d = sim.deployments().get("web").await?;
        let s = d.status.unwrap_or_default();
        Ok((s.available_replicas == Some(3) && s.updated_replicas == Some(3)).then_some(s))
    })
    .await?;
    let available = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Available");
    assert_eq!(available.map(|c| c.status), Some("True".to_string()));

    // Scale down to one: two processes go away.
    let patch = serde_json::json!({"spec": {"replicas": 1}});
    sim.deployments()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    poll("1 pod left", WAIT, || async {
        let pods = live_pods(&sim, "web").await?;
        let gone = pods.len() == 1;
        Ok(gone.then_some(()))
    })
    .await?;
    // Exactly one of the original processes is left running.
    poll("processes of removed pods to exit", WAIT, || async {
        let n: usize = pods
            .iter()
            .map(|p| processes_of(p.metadata.name.as_deref().unwrap_or_default()).len())
            .sum();
        Ok((n == 1).then_some(()))
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn rolling_update_replaces_pods_and_scales_the_old_replica_set_to_zero() -> anyhow::Result<()>
{
    // A template change creates a second ReplicaSet; when done, all pods belong to it and the
    // old one has zero replicas.
    let sim = Sim::start().await?;
    sim.deployments()
        .create(&PostParams::default(), &deployment("roll", 2, IMAGE))
        .await?;
    let before = poll("2 ready pods", WAIT, || async {
        let pods = live_pods(&sim, "roll").await?;
        Ok((pods.len() == 2 && pods.iter().all(is_ready)).then_some(pods))
    })
    .await?;
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "kubesim/testpod:2"}]}}}});
    sim.deployments()
        .patch("roll", &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    let rs_api: kube::Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        kube::Api::namespaced(sim.client.clone(), "default");
    poll("rollout to complete", WAIT, || async {
        let d = sim.deployments().get("roll").await?;
        let s = d.status.clone().unwrap_or_default();
        let progressing = s
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Progressing");
        // As `kubectl rollout status`: the status must describe the updated generation.
        let done = s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(2)
            && s.replicas == Some(2)
            && s.available_replicas == Some(2)
            && progressing.and_then(|c| c.reason).as_deref() == Some("NewReplicaSetAvailable");
        let revision = d
            .metadata
            .annotations
            .and_then(|a| a.get("deployment.kubernetes.io/revision").cloned());
        Ok((done && revision.as_deref() == Some("2")).then_some(()))
    })
    .await?;
    let sets = rs_api.list(&Default::default()).await?.items;
    assert_eq!(sets.len(), 2, "old and new ReplicaSet");
    let mut replicas: Vec<(String, i32)> = sets
        .iter()
        .map(|rs| {
            let image = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref())
                .and_then(|s| s.containers[0].image.clone());
            (
                image.unwrap_or_default(),
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1),
            )
        })
        .collect();
    replicas.sort();
    assert_eq!(
        replicas,
        vec![
            ("kubesim/testpod:1".to_string(), 0),
            ("kubesim/testpod:2".to_string(), 2)
        ]
    );
    let after = live_pods(&sim, "roll").await?;
    for old in &before {
        assert!(
            !after.iter().any(|p| p.metadata.uid == old.metadata.uid),
            "old pods replaced"
        );
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn deleting_a_deployment_stops_its_processes() -> anyhow::Result<()> {
    // Garbage collection removes the pods, and the kubelet stops their processes.
    let sim = Sim::start().await?;
    sim.deployments()
        .create(&PostParams::default(), &deployment("gone", 2, IMAGE))
        .await?;
    let pods = poll("2 ready pods", WAIT, || async {
        let pods = live_pods(&sim, "gone").await?;
        Ok((pods.len() == 2 && pods.iter().all(is_ready)).then_some(pods))
    })
    .await?;
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert!(
        names.iter().all(|n| processes_of(n).len() == 1),
        "one process per pod"
    );
    sim.deployments()
        .delete("gone", &DeleteParams::background())
        .await?;
    poll("processes to stop and pods to go", WAIT, || async {
        let running: usize = names.iter().map(|n| processes_of(n).len()).sum();
        let left = sim.pods().list(&Default::default()).await?.items.len();
        Ok((running == 0 && left == 0).then_some(()))
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}
