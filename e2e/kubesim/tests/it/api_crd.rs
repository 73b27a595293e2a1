//! CustomResourceDefinitions: serving, schema validation, defaults, pruning, structural
//! checks, status conditions, scale and printer-column tables for custom resources.

use anyhow::Result;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::Api;
use kubesim::Cluster;
use serde_json::{json, Value};

use crate::support::{api_error, fixture, raw, raw_text, start};

async fn with_widgets() -> Result<(Cluster, Api<DynamicObject>)> {
    let cluster = start().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let crd: CustomResourceDefinition =
        serde_json::from_value(fixture("widgets.example.com.yaml")?)?;
    crds.create(&PostParams::default(), &crd).await?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let api = Api::namespaced_with(cluster.client(), "default", &ar);
    Ok((cluster, api))
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}))
        .expect("valid object")
}

#[tokio::test]
async fn crd_is_established_and_served() -> Result<()> {
    // A created CRD reports Established/NamesAccepted and its resource appears in discovery.
    let (cluster, api) = with_widgets().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let crd = crds.get("widgets.example.com").await?;
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    for t in ["Established", "NamesAccepted"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True"),
            "{t}"
        );
    }
    let (code, disc) = raw(&cluster, "GET", "/apis/example.com/v1", "", None).await?;
    assert_eq!(code, 200);
    let widgets = disc["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "widgets"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(widgets["shortNames"], json!(["wdg"]));
    assert_eq!(widgets["namespaced"], json!(true));
    api.create(&PostParams::default(), &widget("w", json!({"image": "i"})))
        .await?;
    assert_eq!(api.list(&Default::default()).await?.items.len(), 1);
    Ok(())
}

#[tokio::test]
async fn defaults_applied_and_unknown_fields_pruned() -> Result<()> {
    // Schema defaults fill missing fields (also nested) and undeclared fields are dropped.
    let (_cluster, api) = with_widgets().await?;
    let out = api.create(&PostParams::default(), &widget("w", json!({
        "image": "i", "resources": {"memory": "1Gi"}, "bogus": true, "extra": {"anything": [1, 2]}}))).await?;
    let spec = &out.data["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["tier"], "web");
    assert_eq!(spec["resources"]["cpu"], "100m");
    assert!(spec.get("bogus").is_none());
    assert_eq!(spec["extra"]["anything"], json!([1, 2]));
    Ok(())
}

#[tokio::test]
async fn schema_violations_are_422() -> Result<()> {
    // Required, enum, minimum, pattern, maxItems and type violations are each reported.
    let (_cluster, api) = with_widgets().await?;
    let bad = widget(
        "bad",
        json!({"replicas": -1, "tier": "gold", "name": "Bad_Name",
        "routes": [{"path": "/1"}, {"path": "/2"}, {"path": "/3"}, {"path": "/4"}, {"path": "/5"}]}),
    );
    let status = api_error(api.create(&PostParams::default(), &bad).await)?;
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let fields: Vec<String> = status
        .details
        .map(|d| d.causes.into_iter().map(|c| c.field).collect())
        .unwrap_or_default();
    for f in [
        "spec.image",
        "spec.tier",
        "spec.replicas",
        "spec.name",
        "spec.routes",
    ] {
        assert!(fields.iter().any(|x| x == f), "missing {f} in {fields:?}");
    }
    let status = api_error(
        api.create(
            &PostParams::default(),
            &widget("t", json!({"image": "i", "replicas": "two"})),
        )
        .await,
    )?;
    assert_eq!(status.code, 422);
    Ok(())
}

#[tokio::test]
async fn strict_field_validation_rejects_unknown_fields() -> Result<()> {
    // fieldValidation=Strict turns a pruned field into a 400.
    let (cluster, _api) = with_widgets().await?;
    let body = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "s"}, "spec": {"image": "i", "bogus": 1}});
    let (code, v) = raw(
        &cluster,
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets?fieldValidation=Strict",
        "application/json",
        Some(body.to_string()),
    )
    .await?;
    assert_eq!(code, 400);
    assert!(
        v["message"].as_str().unwrap_or("").contains("spec.bogus"),
        "{v}"
    );
    Ok(())
}

#[tokio::test]
async fn non_structural_schema_is_rejected() -> Result<()> {
    // A schema with an untyped field is not structural and the CRD is refused with 422.
    let cluster = start().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let mut crd = fixture("widgets.example.com.yaml")?;
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        .as_object_mut()
        .map(|m| m.remove("type"));
    let crd: CustomResourceDefinition = serde_json::from_value(crd)?;
    let status = api_error(crds.create(&PostParams::default(), &crd).await)?;
    assert_eq!(status.code, 422);
    let fields: Vec<String> = status
        .details
        .map(|d| d.causes.into_iter().map(|c| c.field).collect())
        .unwrap_or_default();
    assert_eq!(
        fields,
        vec!["spec.versions[0].schema.openAPIV3Schema.properties[spec].type"]
    );
    Ok(())
}

#[tokio::test]
async fn custom_resource_status_scale_and_apply() -> Result<()> {
    // Custom resources have status and scale subresources and merge list-map items by key under apply.
    let (_cluster, api) = with_widgets().await?;
    let pp = PatchParams::apply("flotilla");
    let cfg = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"image": "i", "replicas": 2, "routes": [{"path": "/a", "weight": 1}]}});
    api.patch("w", &pp, &Patch::Apply(&cfg)).await?;
    let other = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"routes": [{"path": "/b", "weight": 2}]}});
    let out = api
        .patch("w", &PatchParams::apply("other"), &Patch::Apply(&other))
        .await?;
    assert_eq!(out.data["spec"]["routes"].as_array().map(Vec::len), Some(2));

    let out = api.patch_status("w", &PatchParams::default(), &Patch::Merge(json!({
        "status": {"replicas": 2, "selector": "app=w", "conditions": [{"type": "Ready", "status": "True"}]}}))).await?;
    assert_eq!(out.data["status"]["replicas"], 2);
    let scale = api.get_scale("w").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    assert_eq!(scale.status.and_then(|s| s.selector), Some("app=w".into()));
    api.patch_scale(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await?;
    let out = api.get("w").await?;
    assert_eq!(out.data["spec"]["replicas"], 5);
    assert_eq!(out.data["status"]["replicas"], 2);
    Ok(())
}

#[tokio::test]
async fn table_uses_printer_columns() -> Result<()> {
    // Asking for a Table returns the CRD's printer columns, evaluated per object.
    let (cluster, api) = with_widgets().await?;
    api.create(
        &PostParams::default(),
        &widget("w", json!({"image": "img:1", "replicas": 3})),
    )
    .await?;
    api.patch_status(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await?;
    let (code, text) = raw_text(
        &cluster,
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets",
        "",
        None,
        Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
    )
    .await?;
    assert_eq!(code, 200);
    let table: Value = serde_json::from_str(&text)?;
    assert_eq!(table["kind"], "Table");
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(cols, vec!["Name", "Image", "Replicas", "Ready", "Age"]);
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[0], "w");
    assert_eq!(cells[1], "img:1");
    assert_eq!(cells[2], 3);
    assert_eq!(cells[3], "True");
    Ok(())
}

#[tokio::test]
async fn deleting_the_crd_removes_its_objects() -> Result<()> {
    // When the CRD goes, its resource stops being served and its objects are gone.
    let (cluster, api) = with_widgets().await?;
    api.create(&PostParams::default(), &widget("w", json!({"image": "i"})))
        .await?;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    crds.delete("widgets.example.com", &Default::default())
        .await?;
    let (code, _) = raw(
        &cluster,
        "GET",
        "/apis/example.com/v1/namespaces/default/widgets",
        "",
        None,
    )
    .await?;
    assert_eq!(code, 404);
    Ok(())
}

#[tokio::test]
async fn cluster_scoped_multi_version_crd() -> Result<()> {
    // A cluster-scoped CRD with two served versions serves the same objects under both.
    let cluster = start().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let schema = json!({"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"size": {"type": "integer", "default": 3}}}}}});
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "pools.example.com"},
        "spec": {"group": "example.com", "scope": "Cluster",
            "names": {"kind": "Pool", "plural": "pools", "singular": "pool"},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "schema": schema},
                {"name": "v1beta1", "served": true, "storage": false, "schema": schema}]}
    }))?;
    crds.create(&PostParams::default(), &crd).await?;
    let v1 = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Pool"),
        "pools",
    );
    let beta = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1beta1", "Pool"),
        "pools",
    );
    let pools_v1: Api<DynamicObject> = Api::all_with(cluster.client(), &v1);
    let pools_beta: Api<DynamicObject> = Api::all_with(cluster.client(), &beta);
    let obj: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.com/v1beta1", "kind": "Pool",
        "metadata": {"name": "p"}, "spec": {}}))?;
    let created = pools_beta.create(&PostParams::default(), &obj).await?;
    assert_eq!(created.metadata.namespace, None);
    assert_eq!(created.data["spec"]["size"], 3);
    let via_v1 = pools_v1.get("p").await?;
    assert_eq!(
        via_v1.types.map(|t| t.api_version),
        Some("example.com/v1".to_string())
    );
    let (code, _) = raw(
        &cluster,
        "GET",
        "/apis/example.com/v1/namespaces/default/pools/p",
        "",
        None,
    )
    .await?;
    assert_eq!(code, 404);
    Ok(())
}
