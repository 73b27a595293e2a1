//! Deletion: finalizers, garbage collection of owner references (background, foreground,
//! orphan), namespace deletion and deletecollection.

use anyhow::Result;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::support::{api_error, start};

fn cm(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    let refs: Vec<serde_json::Value> = owner
        .map(|o| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o.name_any(), "uid": o.uid(), "blockOwnerDeletion": true}))
        .into_iter()
        .collect();
    serde_json::from_value(
        json!({"metadata": {"name": name, "ownerReferences": refs, "labels": {"set": "x"}}}),
    )
    .expect("valid")
}

#[tokio::test]
async fn finalizers_hold_objects_until_removed() -> Result<()> {
    // An object with a finalizer gets deletionTimestamp and stays until the finalizer is removed.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let mut obj = cm("f", None);
    obj.metadata.finalizers = Some(vec!["example.com/cleanup".into()]);
    api.create(&PostParams::default(), &obj).await?;
    api.delete("f", &DeleteParams::default()).await?;
    let held = api.get("f").await?;
    assert!(held.metadata.deletion_timestamp.is_some());
    // New finalizers cannot be added while deleting.
    let err = api
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/cleanup", "x/y"]}})),
        )
        .await;
    assert_eq!(api_error(err)?.code, 422);
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert_eq!(api_error(api.get("f").await)?.code, 404);
    Ok(())
}

#[tokio::test]
async fn background_deletion_collects_dependents() -> Result<()> {
    // Dependents whose owners are all gone are deleted, transitively.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let owner = api
        .create(&PostParams::default(), &cm("owner", None))
        .await?;
    let child = api
        .create(&PostParams::default(), &cm("child", Some(&owner)))
        .await?;
    api.create(&PostParams::default(), &cm("grandchild", Some(&child)))
        .await?;
    api.delete("owner", &DeleteParams::background()).await?;
    assert!(api.list(&ListParams::default()).await?.items.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_dependent_created_after_its_owner_is_gone_is_collected() -> Result<()> {
    // A dependent whose owner no longer exists (deleted, or recreated under a new uid) is
    // garbage as soon as it is created, as the real collector finds it; one with a live owner
    // stays.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let owner = api
        .create(&PostParams::default(), &cm("owner", None))
        .await?;
    api.delete("owner", &DeleteParams::background()).await?;
    api.create(&PostParams::default(), &cm("late", Some(&owner)))
        .await?;
    assert_eq!(api_error(api.get("late").await)?.code, 404);

    let again = api
        .create(&PostParams::default(), &cm("owner", None))
        .await?;
    api.create(&PostParams::default(), &cm("stale-uid", Some(&owner)))
        .await?;
    assert_eq!(api_error(api.get("stale-uid").await)?.code, 404);
    api.create(&PostParams::default(), &cm("kept", Some(&again)))
        .await?;
    assert!(api.get("kept").await.is_ok());
    Ok(())
}

#[tokio::test]
async fn foreground_deletion_waits_for_dependents() -> Result<()> {
    // With foreground propagation the owner stays (foregroundDeletion finalizer) until its
    // dependents are gone, including one held by its own finalizer.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let owner = api
        .create(&PostParams::default(), &cm("owner", None))
        .await?;
    let mut child = cm("child", Some(&owner));
    child.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &child).await?;
    api.delete("owner", &DeleteParams::foreground()).await?;
    let held = api.get("owner").await?;
    assert!(held
        .finalizers()
        .contains(&"foregroundDeletion".to_string()));
    assert!(api
        .get("child")
        .await?
        .metadata
        .deletion_timestamp
        .is_some());
    api.patch(
        "child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert!(api.list(&ListParams::default()).await?.items.is_empty());
    Ok(())
}

#[tokio::test]
async fn orphan_deletion_keeps_dependents() -> Result<()> {
    // With orphan propagation the dependent stays and loses its owner reference.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let owner = api
        .create(&PostParams::default(), &cm("owner", None))
        .await?;
    api.create(&PostParams::default(), &cm("child", Some(&owner)))
        .await?;
    api.delete(
        "owner",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(api_error(api.get("owner").await)?.code, 404);
    assert!(api.get("child").await?.owner_references().is_empty());
    Ok(())
}

#[tokio::test]
async fn namespace_deletion_deletes_contents() -> Result<()> {
    // Deleting a namespace removes what is in it and then the namespace itself.
    let cluster = start().await?;
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "team");
    let mut held = cm("held", None);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &held).await?;
    api.create(&PostParams::default(), &cm("plain", None))
        .await?;
    namespaces.delete("team", &DeleteParams::default()).await?;
    let terminating = namespaces.get("team").await?;
    assert_eq!(
        terminating.status.and_then(|s| s.phase),
        Some("Terminating".into())
    );
    assert_eq!(
        api_error(api.create(&PostParams::default(), &cm("late", None)).await)?.code,
        403
    );
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert_eq!(api_error(namespaces.get("team").await)?.code, 404);
    Ok(())
}

#[tokio::test]
async fn delete_collection_by_label() -> Result<()> {
    // deletecollection removes exactly the selected objects.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    api.create(&PostParams::default(), &cm("a", None)).await?;
    api.create(&PostParams::default(), &cm("b", None)).await?;
    let keep: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "keep"}}))?;
    api.create(&PostParams::default(), &keep).await?;
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("set=x"),
    )
    .await?;
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(names, vec!["keep"]);
    Ok(())
}

#[tokio::test]
async fn bound_pods_terminate_gracefully() -> Result<()> {
    // A pod bound to a node is only marked for deletion; a zero grace period removes it, as the kubelet does.
    let cluster = start().await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )?;
    pods.create(&PostParams::default(), &pod).await?;
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"nodeName": "kubesim"}})),
    )
    .await?;
    pods.delete("p", &DeleteParams::default()).await?;
    let terminating = pods.get("p").await?;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    pods.delete(
        "p",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(api_error(pods.get("p").await)?.code, 404);
    Ok(())
}
