//! Merge, JSON and strategic merge patches, and server-side apply with field managers.

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use crate::support::{api_error, start};

fn deployment(replicas: i32, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}}
    })
}

fn container_names(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn apply_converges_and_reapply_keeps_resource_version() -> Result<()> {
    // Server-side apply creates the object, and re-applying the same config is a no-op write.
    let cluster = start().await?;
    let api: Api<Deployment> = Api::namespaced(cluster.client(), "default");
    let cfg = deployment(
        2,
        json!([{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}]),
    );
    let pp = PatchParams::apply("flotilla");
    let first = api.patch("web", &pp, &Patch::Apply(&cfg)).await?;
    let second = api.patch("web", &pp, &Patch::Apply(&cfg)).await?;
    assert_eq!(first.resource_version(), second.resource_version());
    assert_eq!(first.metadata.generation, Some(1));
    let managers: Vec<(String, String)> = second
        .managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        managers,
        vec![("flotilla".to_string(), "Apply".to_string())]
    );

    let changed = deployment(
        3,
        json!([{"name": "app", "image": "app:2", "ports": [{"containerPort": 8080}]}]),
    );
    let third = api.patch("web", &pp, &Patch::Apply(&changed)).await?;
    assert_ne!(third.resource_version(), second.resource_version());
    assert_eq!(third.metadata.generation, Some(2));
    Ok(())
}

#[tokio::test]
async fn apply_conflicts_with_other_manager_unless_forced() -> Result<()> {
    // Another manager's field with a different value is a 409 with causes; force takes it over.
    let cluster = start().await?;
    let api: Api<Deployment> = Api::namespaced(cluster.client(), "default");
    let cfg = deployment(2, json!([{"name": "app", "image": "app:1"}]));
    api.patch("web", &PatchParams::apply("flotilla"), &Patch::Apply(&cfg))
        .await?;
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await?;

    let status = api_error(
        api.patch("web", &PatchParams::apply("flotilla"), &Patch::Apply(&cfg))
            .await,
    )?;
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].field, ".spec.replicas");

    let forced = api
        .patch(
            "web",
            &PatchParams::apply("flotilla").force(),
            &Patch::Apply(&cfg),
        )
        .await?;
    assert_eq!(forced.spec.as_ref().and_then(|s| s.replicas), Some(2));
    Ok(())
}

#[tokio::test]
async fn apply_removes_fields_the_manager_stops_applying() -> Result<()> {
    // A container dropped from the applied config is removed; another manager's container stays.
    let cluster = start().await?;
    let api: Api<Deployment> = Api::namespaced(cluster.client(), "default");
    let both = deployment(
        1,
        json!([{"name": "app", "image": "a"}, {"name": "sidecar", "image": "s"}]),
    );
    api.patch("web", &PatchParams::apply("flotilla"), &Patch::Apply(&both))
        .await?;
    let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "debug", "image": "d"}]}}}});
    api.patch(
        "web",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(&other),
    )
    .await?;
    let only_app = deployment(1, json!([{"name": "app", "image": "a"}]));
    let out = api
        .patch(
            "web",
            &PatchParams::apply("flotilla"),
            &Patch::Apply(&only_app),
        )
        .await?;
    assert_eq!(container_names(&out), vec!["app", "debug"]);
    Ok(())
}

#[tokio::test]
async fn strategic_merge_patch_merges_containers_by_name() -> Result<()> {
    // A strategic patch of one container keeps the others; `$patch: delete` removes one.
    let cluster = start().await?;
    let api: Api<Deployment> = Api::namespaced(cluster.client(), "default");
    let d: Deployment = serde_json::from_value(deployment(
        1,
        json!([
        {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}]},
        {"name": "side", "image": "s:1"}]),
    ))?;
    api.create(&PostParams::default(), &d).await?;
    let out = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "a:2", "env": [{"name": "B", "value": "2"}]}]}}}})),
        )
        .await?;
    let pod = out
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    assert_eq!(pod.containers[0].image.as_deref(), Some("a:2"));
    assert_eq!(pod.containers[0].env.as_ref().map(Vec::len), Some(2));
    assert_eq!(container_names(&out), vec!["app", "side"]);
    let out = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
        {"name": "side", "$patch": "delete"}]}}}})),
        )
        .await?;
    assert_eq!(container_names(&out), vec!["app"]);
    Ok(())
}

#[tokio::test]
async fn merge_and_json_patches() -> Result<()> {
    // Merge patches replace lists and delete keys with null; JSON patches apply operations,
    // and a failing `test` operation rejects the patch.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}))?;
    api.create(&PostParams::default(), &cm).await?;
    let out = api
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": null, "c": "3"}})),
        )
        .await?;
    assert_eq!(
        out.data
            .clone()
            .unwrap_or_default()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        vec!["b", "c"]
    );
    let ops: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/data/d", "value": "4"}, {"op": "remove", "path": "/data/b"}]),
    )?;
    let out = api
        .patch("c", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await?;
    assert_eq!(
        out.data
            .unwrap_or_default()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        vec!["c", "d"]
    );
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/c", "value": "nope"}]))?;
    let status = api_error(
        api.patch("c", &PatchParams::default(), &Patch::<()>::Json(failing))
            .await,
    )?;
    assert_eq!(status.code, 422);
    Ok(())
}

#[tokio::test]
async fn patch_with_stale_resource_version_conflicts() -> Result<()> {
    // A merge patch carrying an old resourceVersion is rejected with 409.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1"}}))?;
    let created = api.create(&PostParams::default(), &cm).await?;
    api.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await?;
    let stale =
        json!({"metadata": {"resourceVersion": created.resource_version()}, "data": {"a": "3"}});
    let status = api_error(
        api.patch("c", &PatchParams::default(), &Patch::Merge(stale))
            .await,
    )?;
    assert_eq!(status.code, 409);
    Ok(())
}
