//! The status and scale subresources.

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::support::start;

fn deployment() -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}
    }))
    .expect("valid deployment")
}

#[tokio::test]
async fn status_and_main_resource_ignore_each_other() -> Result<()> {
    // Writes to the main resource keep status; writes to status keep spec and generation.
    let cluster = start().await?;
    let api: Api<Deployment> = Api::namespaced(cluster.client(), "default");
    api.create(&PostParams::default(), &deployment()).await?;

    let out = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 7}})),
        )
        .await?;
    assert_eq!(out.status.as_ref().and_then(|s| s.replicas), None);

    let out = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({
        "spec": {"replicas": 9}, "status": {"replicas": 1, "observedGeneration": 1}})),
        )
        .await?;
    assert_eq!(out.status.as_ref().and_then(|s| s.replicas), Some(1));
    assert_eq!(out.spec.as_ref().and_then(|s| s.replicas), Some(1));
    assert_eq!(out.metadata.generation, Some(1));

    let status_apply = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "status": {"readyReplicas": 1}});
    let out = api
        .patch_status(
            "web",
            &PatchParams::apply("ctrl"),
            &Patch::Apply(&status_apply),
        )
        .await?;
    assert_eq!(out.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
    let entry = out
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some("ctrl"))
        .cloned();
    assert_eq!(
        entry.and_then(|e| e.subresource),
        Some("status".to_string())
    );

    let out = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await?;
    assert_eq!(out.metadata.generation, Some(2));
    assert_eq!(out.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
    Ok(())
}

#[tokio::test]
async fn scale_subresource_reads_and_writes_replicas() -> Result<()> {
    // GET scale reports spec/status replicas and the selector; PATCH scale changes spec.replicas.
    let cluster = start().await?;
    let api: Api<Deployment> = Api::namespaced(cluster.client(), "default");
    api.create(&PostParams::default(), &deployment()).await?;
    let scale = api.get_scale("web").await?;
    assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(1));
    assert_eq!(
        scale.status.as_ref().and_then(|s| s.selector.clone()),
        Some("app=web".to_string())
    );
    let scaled = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await?;
    assert_eq!(scaled.spec.as_ref().and_then(|s| s.replicas), Some(4));
    assert_eq!(api.get("web").await?.spec.and_then(|s| s.replicas), Some(4));

    // The scale writer now owns spec.replicas: applying another value conflicts.
    let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
    match api
        .patch("web", &PatchParams::apply("flotilla"), &Patch::Apply(&cfg))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
        other => anyhow::bail!("expected a conflict, got {other:?}"),
    }
    Ok(())
}
