//! Create, get, list, update and delete through kube-rs over real HTTP, with the error
//! bodies the real API server sends.

use std::collections::BTreeMap;

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;
use serde_json::json;

use crate::support::{api_error, raw, start};

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "data": {"k": "v"}
    }))
    .expect("valid configmap")
}

#[tokio::test]
async fn create_get_update_delete_round_trip() -> Result<()> {
    // Server-set metadata appears on create and an update with a stale resourceVersion is a 409.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let created = api.create(&PostParams::default(), &cm("a", &[])).await?;
    let meta = &created.metadata;
    assert!(meta.uid.as_ref().is_some_and(|u| !u.is_empty()));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv1: u64 = meta.resource_version.as_deref().unwrap_or("0").parse()?;

    let mut got = api.get("a").await?;
    got.data = Some(BTreeMap::from([("k".to_string(), "changed".to_string())]));
    let updated = api.replace("a", &PostParams::default(), &got).await?;
    let rv2: u64 = updated
        .metadata
        .resource_version
        .as_deref()
        .unwrap_or("0")
        .parse()?;
    assert!(rv2 > rv1);
    assert_eq!(updated.metadata.generation, Some(2));

    // `got` still carries rv1: replacing with it again is a conflict.
    let status = api_error(api.replace("a", &PostParams::default(), &got).await)?;
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");

    api.delete("a", &DeleteParams::default()).await?;
    let status = api_error(api.get("a").await)?;
    assert_eq!(status.code, 404);
    assert_eq!(status.reason, "NotFound");
    assert_eq!(status.message, "configmaps \"a\" not found");
    Ok(())
}

#[tokio::test]
async fn duplicate_create_is_already_exists() -> Result<()> {
    // Creating an existing name is 409 AlreadyExists with details naming the object.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    api.create(&PostParams::default(), &cm("dup", &[])).await?;
    let status = api_error(api.create(&PostParams::default(), &cm("dup", &[])).await)?;
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(
        status.details.as_ref().map(|d| d.name.as_str()),
        Some("dup")
    );
    Ok(())
}

#[tokio::test]
async fn generate_name_and_missing_namespace() -> Result<()> {
    // generateName gets a random suffix; creating in a namespace that does not exist is 404.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let mut obj = cm("", &[]);
    obj.metadata.name = None;
    obj.metadata.generate_name = Some("gen-".into());
    let created = api.create(&PostParams::default(), &obj).await?;
    let name = created.metadata.name.unwrap_or_default();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    let missing: Api<ConfigMap> = Api::namespaced(cluster.client(), "nope");
    let status = api_error(missing.create(&PostParams::default(), &cm("x", &[])).await)?;
    assert_eq!(status.code, 404);
    assert_eq!(status.message, "namespaces \"nope\" not found");
    Ok(())
}

#[tokio::test]
async fn invalid_objects_are_422_with_causes() -> Result<()> {
    // Validation failures name each field, like the real server's Invalid status.
    let cluster = start().await?;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), "default");
    let bad: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "other"}},
                              "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    }))?;
    let status = api_error(deployments.create(&PostParams::default(), &bad).await)?;
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].field, "spec.template.metadata.labels");

    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let status = api_error(
        api.create(&PostParams::default(), &cm("Bad_Name", &[]))
            .await,
    )?;
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value"),
        "{}",
        status.message
    );

    let services: Api<Service> = Api::namespaced(cluster.client(), "default");
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}, {"port": 81}]}}),
    )?;
    let status = api_error(services.create(&PostParams::default(), &svc).await)?;
    assert_eq!(status.code, 422);
    Ok(())
}

#[tokio::test]
async fn type_errors_and_strict_unknown_fields_are_400() -> Result<()> {
    // A body that does not decode is 400; unknown fields are dropped, or 400 with Strict.
    let cluster = start().await?;
    let path = "/api/v1/namespaces/default/configmaps";
    let (code, body) = raw(&cluster, "POST", path, "application/json",
        Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "t"}, "data": "not-a-map"}).to_string())).await?;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));

    let with_unknown = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u"}, "data": {}, "bogus": 1}).to_string();
    let (code, body) = raw(
        &cluster,
        "POST",
        &format!("{path}?fieldValidation=Strict"),
        "application/json",
        Some(with_unknown.clone()),
    )
    .await?;
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("unknown field \"bogus\""),
        "{body}"
    );
    let (code, body) = raw(
        &cluster,
        "POST",
        path,
        "application/json",
        Some(with_unknown),
    )
    .await?;
    assert_eq!(code, 201);
    assert!(body.get("bogus").is_none());
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", cluster.url()))
        .header("content-type", "application/json")
        .body(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w"}, "bogus": 1})
                .to_string(),
        )
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 201);
    let warning = resp
        .headers()
        .get("warning")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(warning, "299 - \"unknown field \\\"bogus\\\"\"");
    Ok(())
}

#[tokio::test]
async fn label_and_field_selectors_and_pagination() -> Result<()> {
    // Lists filter by equality and set-based label selectors and by name, and page with continue.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    for (n, tier) in [("a", "web"), ("b", "db"), ("c", "web"), ("d", "cache")] {
        api.create(
            &PostParams::default(),
            &cm(n, &[("tier", tier), ("app", "x")]),
        )
        .await?;
    }
    let names = |l: kube::api::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect()
    };
    assert_eq!(
        names(api.list(&ListParams::default().labels("tier=web")).await?),
        vec!["a", "c"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("tier in (db,cache),app"))
                .await?
        ),
        vec!["b", "d"]
    );
    assert_eq!(
        names(api.list(&ListParams::default().labels("tier!=web")).await?),
        vec!["b", "d"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=c"))
                .await?
        ),
        vec!["c"]
    );

    let first = api.list(&ListParams::default().limit(3)).await?;
    let token = first.metadata.continue_.clone().unwrap_or_default();
    assert_eq!(first.metadata.remaining_item_count, Some(1));
    assert_eq!(names(first), vec!["a", "b", "c"]);
    let second = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await?;
    assert_eq!(second.metadata.continue_, None);
    assert_eq!(names(second), vec!["d"]);

    let (code, v) = raw(
        &cluster,
        "GET",
        "/api/v1/namespaces/default/configmaps?resourceVersion=2&resourceVersionMatch=Exact",
        "",
        None,
    )
    .await?;
    assert_eq!((code, v["reason"].as_str()), (410, Some("Expired")));

    let all: Api<ConfigMap> = Api::all(cluster.client());
    assert_eq!(all.list(&ListParams::default()).await?.items.len(), 4);
    Ok(())
}

#[tokio::test]
async fn dry_run_does_not_store() -> Result<()> {
    // dryRun=All validates and answers like a real write but stores nothing.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let out = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &cm("dry", &[]),
        )
        .await?;
    assert_eq!(out.metadata.name.as_deref(), Some("dry"));
    assert_eq!(api_error(api.get("dry").await)?.code, 404);
    Ok(())
}

#[tokio::test]
async fn discovery_and_unsupported_requests() -> Result<()> {
    // Discovery lists groups and resources; unknown paths are 404 and unsupported media 415.
    let cluster = start().await?;
    let (code, v) = raw(&cluster, "GET", "/apis/apps/v1", "", None).await?;
    assert_eq!(code, 200);
    let resources: Vec<&str> = v["resources"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(resources.contains(&"deployments/scale"));
    let (code, v) = raw(&cluster, "GET", "/version", "", None).await?;
    assert_eq!((code, v["major"].as_str()), (200, Some("1")));
    let (code, _) = raw(&cluster, "GET", "/apis/nothing.example/v1/things", "", None).await?;
    assert_eq!(code, 404);
    let (code, v) = raw(
        &cluster,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/vnd.kubernetes.protobuf",
        Some("x".into()),
    )
    .await?;
    assert_eq!(
        (code, v["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let (code, v) = raw(
        &cluster,
        "POST",
        "/api/v1/namespaces/default/pods/p/exec",
        "application/json",
        None,
    )
    .await?;
    assert_eq!((code, v["reason"].as_str()), (501, Some("NotImplemented")));
    let (code, _) = raw(
        &cluster,
        "PUT",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        Some("{}".into()),
    )
    .await?;
    assert_eq!(code, 405);

    let namespaces: Api<Namespace> = Api::all(cluster.client());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()));
    Ok(())
}

#[tokio::test]
async fn non_object_bodies_are_bad_requests() -> Result<()> {
    // A body or patch result that is not a JSON object is refused with 400 and the server stays up.
    let cluster = start().await?;
    let path = "/api/v1/namespaces/default/configmaps";
    let (code, _) = raw(
        &cluster,
        "POST",
        path,
        "application/json",
        Some("[1, 2]".into()),
    )
    .await?;
    assert_eq!(code, 400);
    let (code, _) = raw(
        &cluster,
        "POST",
        path,
        "application/json",
        Some(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}).to_string(),
        ),
    )
    .await?;
    assert_eq!(code, 201);
    let (code, _) = raw(
        &cluster,
        "PATCH",
        &format!("{path}/c"),
        "application/json-patch+json",
        Some(json!([{"op": "replace", "path": "", "value": [1]}]).to_string()),
    )
    .await?;
    assert_eq!(code, 400);
    let (code, _) = raw(&cluster, "GET", &format!("{path}/c"), "", None).await?;
    assert_eq!(code, 200);
    Ok(())
}

#[tokio::test]
async fn namespaces_get_their_name_label_and_pods_bind() -> Result<()> {
    // New namespaces carry kubernetes.io/metadata.name; pods/binding assigns a node once.
    let cluster = start().await?;
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}}))?;
    let created = namespaces.create(&PostParams::default(), &ns).await?;
    assert_eq!(
        created
            .metadata
            .labels
            .unwrap_or_default()
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("team-a")
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client(), "team-a");
    let pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )?;
    pods.create(&PostParams::default(), &pod).await?;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "kubesim"}});
    let path = "/api/v1/namespaces/team-a/pods/p/binding";
    let (code, _) = raw(
        &cluster,
        "POST",
        path,
        "application/json",
        Some(binding.to_string()),
    )
    .await?;
    assert_eq!(code, 201);
    assert_eq!(
        pods.get("p")
            .await?
            .spec
            .and_then(|s| s.node_name)
            .as_deref(),
        Some("kubesim")
    );
    let (code, _) = raw(
        &cluster,
        "POST",
        path,
        "application/json",
        Some(binding.to_string()),
    )
    .await?;
    assert_eq!(code, 409);
    Ok(())
}
