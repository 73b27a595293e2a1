//! The pods/eviction subresource: a delete that PodDisruptionBudgets may refuse, with the real
//! server's answers (201 Status, 404, 409 on preconditions, 429 with a `DisruptionBudget` cause,
//! the two-budget refusal), the `IfHealthyBudget`/`AlwaysAllow` rules for unready pods, RBAC on
//! `pods/eviction`, and what kube-rs clients send.

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{Eviction, PodDisruptionBudget};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    DeleteParams, EvictParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent,
    WatchParams,
};
use kube::core::Status;
use kube::{Api, ResourceExt};
use kubesim::Cluster;
use serde_json::{json, Value};

use crate::support::{api_error, raw, start};

const NS: &str = "default";

fn pods(cluster: &Cluster) -> Api<Pod> {
    Api::namespaced(cluster.client(), NS)
}

/// Creates a pod labelled `app=web`; `ready` sets it Running with that Ready status (`None`
/// leaves it as no kubelet has seen it: pending). Returns its uid.
async fn pod(cluster: &Cluster, name: &str, ready: Option<bool>) -> Result<String> {
    pod_with(cluster, name, ready, json!({})).await
}

async fn pod_with(
    cluster: &Cluster,
    name: &str,
    ready: Option<bool>,
    extra_meta: Value,
) -> Result<String> {
    let mut meta = json!({"name": name, "labels": {"app": "web"}});
    if let (Some(m), Some(extra)) = (meta.as_object_mut(), extra_meta.as_object()) {
        m.extend(extra.clone());
    }
    let p: Pod = serde_json::from_value(json!({
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "image": "example/app:1"}]},
    }))?;
    let created = pods(cluster).create(&PostParams::default(), &p).await?;
    if let Some(ready) = ready {
        let status = if ready { "True" } else { "False" };
        pods(cluster)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Running",
                    "conditions": [{"type": "Ready", "status": status}]}})),
            )
            .await?;
    }
    created.metadata.uid.context("a created pod has a uid")
}

async fn budget(cluster: &Cluster, name: &str, spec: Value) -> Result<()> {
    let mut spec = spec;
    spec["selector"] = json!({"matchLabels": {"app": "web"}});
    let pdb: PodDisruptionBudget =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
    Api::<PodDisruptionBudget>::namespaced(cluster.client(), NS)
        .create(&PostParams::default(), &pdb)
        .await?;
    Ok(())
}

/// POSTs a `policy/v1` Eviction for `name` with these `deleteOptions`.
async fn evict(cluster: &Cluster, name: &str, delete_options: Value) -> Result<(u16, Value)> {
    let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": NS}, "deleteOptions": delete_options});
    raw(
        cluster,
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods/{name}/eviction"),
        "application/json",
        Some(body.to_string()),
    )
    .await
}

async fn exists(cluster: &Cluster, name: &str) -> Result<bool> {
    Ok(pods(cluster).get_opt(name).await?.is_some())
}

fn granted() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

#[tokio::test]
async fn eviction_without_a_budget_deletes_the_pod() -> Result<()> {
    // With no budget selecting it, an eviction is a delete answered with a 201 Success Status.
    let cluster = start().await?;
    pod(&cluster, "a", Some(true)).await?;
    assert_eq!(evict(&cluster, "a", json!({})).await?, (201, granted()));
    assert!(!exists(&cluster, "a").await?);

    // A pod that must wait for a finalizer shows what the eviction wrote before deleting.
    pod_with(
        &cluster,
        "held",
        Some(true),
        json!({"finalizers": ["example.com/hold"]}),
    )
    .await?;
    assert_eq!(evict(&cluster, "held", json!({})).await?.0, 201);
    let held = pods(&cluster).get("held").await?;
    assert!(held.metadata.deletion_timestamp.is_some());
    let target = held
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .context("the evicted pod has a DisruptionTarget condition")?;
    assert_eq!(
        (target.status.as_str(), target.reason.as_deref()),
        ("True", Some("EvictionByEvictionAPI"))
    );

    // Discovery advertises the subresource (kubectl drain looks for it there).
    let (_, core) = raw(&cluster, "GET", "/api/v1", "", None).await?;
    let entry = core["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == "pods/eviction"))
        .cloned();
    assert_eq!(
        entry.map(|e| (e["group"].clone(), e["kind"].clone(), e["verbs"].clone())),
        Some((json!("policy"), json!("Eviction"), json!(["create"])))
    );
    Ok(())
}

#[tokio::test]
async fn watchers_see_the_disruption_target_then_the_deletion() -> Result<()> {
    // An eviction is seen as the real server shows it: the pod modified (its DisruptionTarget
    // condition), then deleted; a refused eviction changes nothing.
    let cluster = start().await?;
    pod(&cluster, "a", Some(true)).await?;
    pod(&cluster, "b", Some(true)).await?;
    budget(&cluster, "web", json!({"minAvailable": 1})).await?;
    let rv = pods(&cluster)
        .get("b")
        .await?
        .metadata
        .resource_version
        .context("a stored pod has a resourceVersion")?;
    assert_eq!(evict(&cluster, "a", json!({})).await?.0, 201);
    assert_eq!(evict(&cluster, "b", json!({})).await?.0, 429);
    let mut events = pods(&cluster)
        .watch(&WatchParams::default().timeout(2), &rv)
        .await?
        .boxed();
    let mut seen = Vec::new();
    while let Some(e) = events.try_next().await? {
        match e {
            WatchEvent::Modified(p) => seen.push(format!("MODIFIED {}", p.name_any())),
            WatchEvent::Deleted(p) => seen.push(format!("DELETED {}", p.name_any())),
            WatchEvent::Added(p) => seen.push(format!("ADDED {}", p.name_any())),
            _ => {}
        }
    }
    assert_eq!(seen, ["MODIFIED a", "DELETED a"]);
    Ok(())
}

#[tokio::test]
async fn a_bound_pod_terminates_with_the_evictions_grace_period() -> Result<()> {
    // An eviction deletes as a DELETE with its options does: a pod on a node gets a
    // deletionTimestamp and the grace period asked for, and the kubelet finishes the deletion.
    let cluster = start().await?;
    pod(&cluster, "a", Some(true)).await?;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "a"},
        "target": {"kind": "Node", "name": "kubesim-node"}});
    let (code, _) = raw(
        &cluster,
        "POST",
        "/api/v1/namespaces/default/pods/a/binding",
        "application/json",
        Some(binding.to_string()),
    )
    .await?;
    assert_eq!(code, 201);
    assert_eq!(
        evict(&cluster, "a", json!({"gracePeriodSeconds": 7})).await?,
        (201, granted())
    );
    let terminating = pods(&cluster).get("a").await?;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(7));
    Ok(())
}

#[tokio::test]
async fn missing_pods_and_mismatched_bodies_are_refused() -> Result<()> {
    // A missing pod is a 404 naming it; a body naming another pod is a 400.
    let cluster = start().await?;
    let (code, body) = evict(&cluster, "ghost", json!({})).await?;
    assert_eq!(
        (code, body["reason"].clone(), body["message"].clone()),
        (404, json!("NotFound"), json!("pods \"ghost\" not found"))
    );
    pod(&cluster, "a", Some(true)).await?;
    let wrong = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "b"}});
    let (code, body) = raw(
        &cluster,
        "POST",
        "/api/v1/namespaces/default/pods/a/eviction",
        "application/json",
        Some(wrong.to_string()),
    )
    .await?;
    assert_eq!(
        (code, body["message"].clone()),
        (
            400,
            json!("name in URL does not match name in Eviction object")
        )
    );
    assert!(exists(&cluster, "a").await?);
    // policy/v1beta1 bodies are accepted too.
    let beta =
        json!({"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": "a"}});
    let (code, _) = raw(
        &cluster,
        "POST",
        "/api/v1/namespaces/default/pods/a/eviction",
        "application/json",
        Some(beta.to_string()),
    )
    .await?;
    assert_eq!(code, 201);
    Ok(())
}

#[tokio::test]
async fn a_wrong_uid_precondition_is_a_conflict_and_keeps_the_pod() -> Result<()> {
    // The preconditions are checked by the eviction's pod update, worded as it words them.
    let cluster = start().await?;
    let uid = pod(&cluster, "a", Some(true)).await?;
    let (code, body) = evict(&cluster, "a", json!({"preconditions": {"uid": "not-it"}})).await?;
    assert_eq!((code, body["reason"].clone()), (409, json!("Conflict")));
    assert_eq!(
        body["message"],
        format!("Operation cannot be fulfilled on Pod \"a\": the UID in the precondition (not-it) does not match the UID in record ({uid}). The object might have been deleted and then recreated")
    );
    assert!(exists(&cluster, "a").await?);

    // A dry run checks them as the delete itself does, and keeps the pod either way.
    let (code, body) = evict(
        &cluster,
        "a",
        json!({"preconditions": {"uid": "not-it"}, "dryRun": ["All"]}),
    )
    .await?;
    assert_eq!(
        (code, body["message"].clone()),
        (
            409,
            json!(format!("Operation cannot be fulfilled on pods \"a\": Precondition failed: UID in precondition: not-it, UID in object meta: {uid}"))
        )
    );
    let (code, _) = evict(
        &cluster,
        "a",
        json!({"preconditions": {"uid": uid}, "dryRun": ["All"]}),
    )
    .await?;
    assert_eq!(code, 201);
    assert!(exists(&cluster, "a").await?);

    assert_eq!(
        evict(&cluster, "a", json!({"preconditions": {"uid": uid}})).await?,
        (201, granted())
    );
    assert!(!exists(&cluster, "a").await?);
    Ok(())
}

#[tokio::test]
async fn a_budget_without_room_refuses_with_429_and_keeps_the_pod() -> Result<()> {
    // minAvailable equal to the ready pods allows no disruption: 429 with a DisruptionBudget
    // cause, and the budget's status shows why.
    let cluster = start().await?;
    pod(&cluster, "a", Some(true)).await?;
    pod(&cluster, "b", Some(true)).await?;
    budget(&cluster, "web", json!({"minAvailable": 2})).await?;
    let (code, body) = evict(&cluster, "a", json!({})).await?;
    assert_eq!(code, 429);
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(
        body["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(
        body["details"]["causes"],
        json!([{"reason": "DisruptionBudget",
            "message": "The disruption budget web needs 2 healthy pods and has 2 currently"}])
    );
    assert!(exists(&cluster, "a").await?);
    let status = Api::<PodDisruptionBudget>::namespaced(cluster.client(), NS)
        .get_status("web")
        .await?
        .status
        .context("the budget has a status")?;
    assert_eq!(
        (
            status.current_healthy,
            status.desired_healthy,
            status.disruptions_allowed,
            status.expected_pods,
            status.observed_generation
        ),
        (2, 2, 0, 2, Some(1))
    );
    Ok(())
}

#[tokio::test]
async fn a_budget_with_room_allows_one_eviction_at_a_time() -> Result<()> {
    // Three ready pods and minAvailable 2: the first eviction goes through, the second would
    // leave one healthy pod and is refused.
    let cluster = start().await?;
    for p in ["a", "b", "c"] {
        pod(&cluster, p, Some(true)).await?;
    }
    budget(&cluster, "web", json!({"minAvailable": 2})).await?;
    assert_eq!(evict(&cluster, "a", json!({})).await?, (201, granted()));
    assert!(!exists(&cluster, "a").await?);
    assert_eq!(evict(&cluster, "b", json!({})).await?.0, 429);
    assert!(exists(&cluster, "b").await?);
    Ok(())
}

#[tokio::test]
async fn unready_pods_follow_the_unhealthy_pod_eviction_policy() -> Result<()> {
    // IfHealthyBudget (the default) lets an unready pod go only while the budget's healthy
    // pods suffice; AlwaysAllow always lets it go.
    let cluster = start().await?;
    pod(&cluster, "a", Some(true)).await?;
    pod(&cluster, "b", Some(true)).await?;
    pod(&cluster, "sick", Some(false)).await?;
    budget(&cluster, "web", json!({"minAvailable": 2})).await?;
    assert_eq!(evict(&cluster, "sick", json!({})).await?.0, 201);

    // One healthy pod where two are needed: the unready pod is protected too.
    pods(&cluster).delete("b", &DeleteParams::default()).await?;
    pod(&cluster, "sick", Some(false)).await?;
    let (code, body) = evict(&cluster, "sick", json!({})).await?;
    assert_eq!(code, 429, "{body}");
    assert!(exists(&cluster, "sick").await?);

    Api::<PodDisruptionBudget>::namespaced(cluster.client(), NS)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unhealthyPodEvictionPolicy": "AlwaysAllow"}})),
        )
        .await?;
    assert_eq!(evict(&cluster, "sick", json!({})).await?.0, 201);
    assert!(!exists(&cluster, "sick").await?);
    // The healthy pod stays protected.
    assert_eq!(evict(&cluster, "a", json!({})).await?.0, 429);
    Ok(())
}

/// Creates `kind` (ReplicaSet or Deployment, apps/v1) `name` selecting `app=web` with
/// `replicas`, owned by `owner` (apiVersion, kind, name, uid) when given. Returns its uid.
async fn workload(
    cluster: &Cluster,
    kind: &str,
    plural: &str,
    name: &str,
    replicas: i64,
    owner: Option<Value>,
) -> Result<String> {
    let mut obj = json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "example/app:1"}]}}}});
    if let Some(o) = owner {
        obj["metadata"]["ownerReferences"] = json!([o]);
    }
    let (code, out) = raw(
        cluster,
        "POST",
        &format!("/apis/apps/v1/namespaces/{NS}/{plural}"),
        "application/json",
        Some(obj.to_string()),
    )
    .await?;
    anyhow::ensure!(code == 201, "creating {kind} {name}: {out}");
    out["metadata"]["uid"]
        .as_str()
        .map(str::to_string)
        .context("a created object has a uid")
}

fn controller(kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true})
}

#[tokio::test]
async fn scaled_budgets_count_the_pods_controller_scale() -> Result<()> {
    // maxUnavailable is taken from the scale of the pods' controller (a ReplicaSet's
    // Deployment when it has one), not from the pods that happen to exist.
    let cluster = start().await?;
    let rs = workload(&cluster, "ReplicaSet", "replicasets", "web-1", 3, None).await?;
    for p in ["a", "b", "c"] {
        let owned = json!({"ownerReferences": [controller("ReplicaSet", "web-1", &rs)]});
        pod_with(&cluster, p, Some(true), owned).await?;
    }
    budget(&cluster, "web", json!({"maxUnavailable": 1})).await?;
    assert_eq!(evict(&cluster, "a", json!({})).await?.0, 201);
    let (code, body) = evict(&cluster, "b", json!({})).await?;
    assert_eq!(code, 429);
    assert_eq!(
        body["details"]["causes"][0]["message"],
        "The disruption budget web needs 2 healthy pods and has 2 currently"
    );

    // The same pods under a ReplicaSet of a Deployment scaled to 4: 3 must stay healthy.
    let deploy = workload(&cluster, "Deployment", "deployments", "web", 4, None).await?;
    let rs2 = workload(
        &cluster,
        "ReplicaSet",
        "replicasets",
        "web-2",
        2,
        Some(controller("Deployment", "web", &deploy)),
    )
    .await?;
    for p in ["b", "c"] {
        pods(&cluster)
            .patch(
                p,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"ownerReferences": [controller("ReplicaSet", "web-2", &rs2)]}})),
            )
            .await?;
    }
    let (code, body) = evict(&cluster, "b", json!({})).await?;
    assert_eq!(code, 429);
    assert_eq!(
        body["details"]["causes"][0]["message"],
        "The disruption budget web needs 3 healthy pods and has 2 currently"
    );
    Ok(())
}

#[tokio::test]
async fn pending_pods_ignore_budgets_and_two_budgets_are_refused() -> Result<()> {
    // A pod no kubelet runs cannot disrupt anything; a running pod under two budgets gets the
    // real server's refusal: a Failure Status with code 500 inside a 201.
    let cluster = start().await?;
    budget(&cluster, "strict", json!({"minAvailable": 5})).await?;
    pod(&cluster, "pending", None).await?;
    assert_eq!(evict(&cluster, "pending", json!({})).await?.0, 201);
    assert!(!exists(&cluster, "pending").await?);

    pod(&cluster, "a", Some(true)).await?;
    budget(&cluster, "other", json!({"maxUnavailable": 1})).await?;
    let (code, body) = evict(&cluster, "a", json!({})).await?;
    assert_eq!(code, 201);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 500,
            "message": "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."})
    );
    assert!(exists(&cluster, "a").await?);
    Ok(())
}

/// A client that impersonates ServiceAccount `sa` of the default namespace.
fn as_service_account(cluster: &Cluster, sa: &str) -> Result<kube::Client> {
    let mut config = kube::Config::new(cluster.url().parse()?);
    config.default_namespace = NS.to_string();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{NS}:{sa}"));
    Ok(kube::Client::try_from(config)?)
}

async fn grant(cluster: &Cluster, sa: &str, resources: &[&str], verbs: &[&str]) -> Result<()> {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": sa},
        "rules": [{"apiGroups": [""], "resources": resources, "verbs": verbs}],
    }))?;
    Api::<Role>::namespaced(cluster.client(), NS)
        .patch(
            sa,
            &PatchParams::apply("test").force(),
            &Patch::Apply(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": sa}, "rules": role.rules}),
            ),
        )
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": sa},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": NS}],
    }))?;
    let bindings = Api::<RoleBinding>::namespaced(cluster.client(), NS);
    if bindings.get_opt(sa).await?.is_none() {
        bindings.create(&PostParams::default(), &binding).await?;
    }
    Ok(())
}

fn eviction(name: &str, uid: Option<&str>) -> Result<Eviction> {
    let mut body = json!({"metadata": {"name": name, "namespace": NS}});
    if let Some(uid) = uid {
        body["deleteOptions"] = json!({"preconditions": {"uid": uid}});
    }
    Ok(serde_json::from_value(body)?)
}

#[tokio::test]
async fn evicting_needs_create_on_pods_eviction() -> Result<()> {
    // Deleting pods is not enough: RBAC authorizes an eviction as `create` on `pods/eviction`.
    let cluster = start().await?;
    pod(&cluster, "a", Some(true)).await?;
    grant(&cluster, "restarter", &["pods"], &["get", "list", "delete"]).await?;
    let api: Api<Pod> = Api::namespaced(as_service_account(&cluster, "restarter")?, NS);
    let r = api
        .create_subresource::<_, Status>(
            "eviction",
            "a",
            &PostParams::default(),
            &eviction("a", None)?,
        )
        .await;
    let refused = api_error(r)?;
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        "pods \"a\" is forbidden: User \"system:serviceaccount:default:restarter\" cannot create resource \"pods/eviction\" in API group \"\" in the namespace \"default\""
    );
    assert!(exists(&cluster, "a").await?);

    grant(
        &cluster,
        "restarter",
        &["pods", "pods/eviction"],
        &["get", "list", "create"],
    )
    .await?;
    let done: Status = api
        .create_subresource(
            "eviction",
            "a",
            &PostParams::default(),
            &eviction("a", None)?,
        )
        .await?;
    assert_eq!(done.code, 201);
    assert!(!exists(&cluster, "a").await?);
    Ok(())
}

#[tokio::test]
async fn kube_rs_evictions_and_their_preconditions() -> Result<()> {
    // `Api::evict` sends its DeleteParams under `delete_options`, a field the Eviction type
    // does not have: the server drops it with a warning, as a real server does, so its UID
    // precondition never applies. An Eviction posted through `create_subresource` carries
    // `deleteOptions`, and its precondition holds.
    let cluster = start().await?;
    let api = pods(&cluster);
    let uid = pod(&cluster, "a", Some(true)).await?;
    let stale = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("not-it".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    // What `Api::evict` sends, and the warning a real server answers it with.
    let sent = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/namespaces/default/pods/missing/eviction",
            cluster.url()
        ))
        .header("content-type", "application/json")
        .body(json!({"delete_options": {"preconditions": {"uid": "x"}}, "metadata": {"name": "missing"}}).to_string())
        .send()
        .await?;
    assert_eq!(sent.status().as_u16(), 404);
    let warning = sent
        .headers()
        .get("warning")
        .and_then(|w| w.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(warning, r#"299 - "unknown field \"delete_options\"""#);
    let params = EvictParams {
        delete_options: Some(stale),
        ..EvictParams::default()
    };
    let status = api.evict("a", &params).await?;
    assert_eq!(status.code, 201);
    assert!(!exists(&cluster, "a").await?, "the stale uid was ignored");

    let uid_b = pod(&cluster, "b", Some(true)).await?;
    assert_ne!(uid, uid_b);
    let r = api
        .create_subresource::<_, Status>(
            "eviction",
            "b",
            &PostParams::default(),
            &eviction("b", Some(&uid))?,
        )
        .await;
    assert_eq!(api_error(r)?.code, 409);
    assert!(exists(&cluster, "b").await?);
    let done: Status = api
        .create_subresource(
            "eviction",
            "b",
            &PostParams::default(),
            &eviction("b", Some(&uid_b))?,
        )
        .await?;
    assert_eq!(done.code, 201);
    assert!(!exists(&cluster, "b").await?);

    // A budget's refusal reaches a kube-rs caller as a 429 API error. kube's default client
    // retries 429s itself (exponential back-off from 5ms, 15 times: minutes), so a caller that
    // wants the refusal at once builds its client with `default_retry: false`.
    pod(&cluster, "c", Some(true)).await?;
    budget(&cluster, "web", json!({"maxUnavailable": 0})).await?;
    let mut config = kube::Config::new(cluster.url().parse()?);
    config.default_namespace = NS.to_string();
    config.default_retry = false;
    let no_retry: Api<Pod> = Api::namespaced(kube::Client::try_from(config)?, NS);
    let refused = api_error(no_retry.evict("c", &EvictParams::default()).await)?;
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (429, "TooManyRequests")
    );
    Ok(())
}
