//! Watches: initial events, resume from a resourceVersion, bookmarks, timeouts, 410 Gone,
//! selector transitions, and kube-rs `watcher` and `Controller` running against kubesim.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_testkit::wait::{for_deletion, for_object, poll};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use kubesim::ClusterConfig;
use serde_json::json;

use crate::support::{raw_text, start, start_with};

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .expect("valid")
}

#[tokio::test]
async fn watch_from_version_sees_later_changes() -> Result<()> {
    // A watch from a list's resourceVersion reports exactly the changes made after it.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    api.create(&PostParams::default(), &cm("before", json!({})))
        .await?;
    let rv = api
        .list(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), &rv)
        .await?
        .boxed();
    api.create(&PostParams::default(), &cm("after", json!({})))
        .await?;
    api.patch(
        "after",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await?;
    api.delete("after", &Default::default()).await?;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.try_next())
            .await?
            .context("stream ended")?;
        match ev {
            Some(WatchEvent::Added(o)) => seen.push(format!("ADDED {}", o.name_any())),
            Some(WatchEvent::Modified(o)) => seen.push(format!("MODIFIED {}", o.name_any())),
            Some(WatchEvent::Deleted(o)) => seen.push(format!("DELETED {}", o.name_any())),
            other => anyhow::bail!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, vec!["ADDED after", "MODIFIED after", "DELETED after"]);
    Ok(())
}

#[tokio::test]
async fn watch_without_version_starts_with_initial_adds_and_bookmarks() -> Result<()> {
    // rv=0 gives the current objects as ADDED; sendInitialEvents ends them with a bookmark.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    api.create(&PostParams::default(), &cm("one", json!({})))
        .await?;
    let path = "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1";
    let (code, text) = raw_text(&cluster, "GET", path, "", None, None).await?;
    assert_eq!(code, 200);
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "one");
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    Ok(())
}

#[tokio::test]
async fn too_old_version_is_gone() -> Result<()> {
    // A resume point older than the kept history gets an ERROR event with 410 Expired.
    let cluster = start_with(ClusterConfig {
        watch_history: 3,
        ..Default::default()
    })
    .await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    for i in 0..6 {
        api.create(&PostParams::default(), &cm(&format!("c{i}"), json!({})))
            .await?;
    }
    let mut stream = api
        .watch(&WatchParams::default().timeout(10), "2")
        .await?
        .boxed();
    match stream.try_next().await? {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => anyhow::bail!("expected 410, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn selector_watch_reports_objects_leaving_and_entering() -> Result<()> {
    // A labelled watch sees DELETED when an object stops matching and ADDED when it matches again.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    api.create(&PostParams::default(), &cm("x", json!({"team": "a"})))
        .await?;
    let rv = api.get("x").await?.resource_version().unwrap_or_default();
    let mut stream = api
        .watch(&WatchParams::default().labels("team=a").timeout(30), &rv)
        .await?
        .boxed();
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "b"}}})),
    )
    .await?;
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await?;
    let first = tokio::time::timeout(Duration::from_secs(20), stream.try_next()).await??;
    assert!(matches!(first, Some(WatchEvent::Deleted(_))), "{first:?}");
    let second = tokio::time::timeout(Duration::from_secs(20), stream.try_next()).await??;
    assert!(matches!(second, Some(WatchEvent::Added(_))), "{second:?}");
    Ok(())
}

#[tokio::test]
async fn watch_ends_at_timeout() -> Result<()> {
    // timeoutSeconds closes the stream, as the real server does.
    let cluster = start().await?;
    let (code, text) = raw_text(
        &cluster,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1",
        "",
        None,
        None,
    )
    .await?;
    assert_eq!(code, 200);
    assert_eq!(text, "");
    Ok(())
}

#[tokio::test]
async fn kube_watcher_follows_changes_across_dropped_watches() -> Result<()> {
    // kube-rs watcher keeps an accurate view while kubesim drops its watches.
    let cluster = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .applied_objects()
        .for_each(|_| async {});
    let task = tokio::spawn(stream);
    reader.wait_until_ready().await?;
    for i in 0..5 {
        api.create(&PostParams::default(), &cm(&format!("w{i}"), json!({})))
            .await?;
        if i == 2 {
            cluster.faults().drop_watches();
        }
    }
    poll(
        "the reflector to see 5 objects",
        Duration::from_secs(30),
        || {
            let n = reader.state().len();
            async move { Ok((n == 5).then_some(())) }
        },
    )
    .await?;
    task.abort();
    Ok(())
}

#[tokio::test]
async fn controller_reconciles_owned_objects() -> Result<()> {
    // A kube-rs Controller reconciles each ConfigMap into a Secret it owns, and is re-triggered
    // when the owned Secret changes or is deleted.
    let cluster = start().await?;
    let client = cluster.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let runs = Arc::new(AtomicUsize::new(0));

    struct Ctx {
        secrets: Api<Secret>,
        runs: Arc<AtomicUsize>,
    }
    #[derive(Debug, thiserror::Error)]
    #[error(transparent)]
    struct ReconcileError(#[from] kube::Error);

    async fn reconcile(obj: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
        ctx.runs.fetch_add(1, Ordering::SeqCst);
        let owner = obj
            .controller_owner_ref(&())
            .into_iter()
            .collect::<Vec<_>>();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": obj.name_any(), "ownerReferences": owner},
            "stringData": {"copy": obj.data.as_ref().and_then(|d| d.get("k")).cloned().unwrap_or_default()}
        }))
        .map_err(kube::Error::SerdeError)?;
        ctx.secrets
            .patch(
                &obj.name_any(),
                &PatchParams::apply("test-controller").force(),
                &Patch::Apply(&secret),
            )
            .await?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<ConfigMap>, _: &ReconcileError, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(200))
    }

    let ctx = Arc::new(Ctx {
        secrets: secrets.clone(),
        runs: runs.clone(),
    });
    let controller = Controller::new(cms.clone(), watcher::Config::default())
        .owns(secrets.clone(), watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    cms.create(&PostParams::default(), &cm("src", json!({})))
        .await?;
    let secret = for_object(&secrets, "src", Duration::from_secs(30), |_| true).await?;
    assert_eq!(secret.owner_references().len(), 1);

    // A change to the owned Secret re-triggers the owner: the controller's watch of Secrets is
    // live, so the deletion below is seen (on a loaded machine that watch may start after the
    // first reconcile, and a deletion before it started would be seen by nobody).
    let before = runs.load(Ordering::SeqCst);
    let touch = json!({"metadata": {"labels": {"touched": "yes"}}});
    secrets
        .patch("src", &PatchParams::default(), &Patch::Merge(&touch))
        .await?;
    poll(
        "a reconcile triggered by the owned Secret's change",
        Duration::from_secs(30),
        || async { Ok((runs.load(Ordering::SeqCst) > before).then_some(())) },
    )
    .await?;

    secrets.delete("src", &Default::default()).await?;
    for_object(&secrets, "src", Duration::from_secs(30), |s| {
        s.uid() != secret.uid()
    })
    .await?;
    assert!(runs.load(Ordering::SeqCst) >= 2);

    // Deleting the owner garbage-collects the secret. The controller is stopped first: a
    // reconcile still running from a cache that has not seen the deletion yet would create the
    // Secret again after its owner is gone, and that is the controller's race, not kubesim's
    // garbage collection (this wait timed out on a loaded machine).
    task.abort();
    let _ = task.await;
    cms.delete("src", &Default::default()).await?;
    for_deletion(&secrets, "src", Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test]
async fn metadata_only_requests_carry_no_data() -> Result<()> {
    // Asked for PartialObjectMetadata, get, list and watch answer with metadata alone (no Secret
    // data crosses the wire), and kube's watcher of PartialObjectMeta follows changes through them.
    let cluster = start().await?;
    let api: Api<Secret> = Api::namespaced(cluster.client(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds", "labels": {"app": "a"}},
        "stringData": {"token": "s3cret"}
    }))?;
    api.create(&PostParams::default(), &secret).await?;
    let list_accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
    let accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let base = "/api/v1/namespaces/default/secrets";
    // The value, base64-encoded as stored, and the `data` field itself (managedFields name it
    // as `f:data`, which metadata keeps).
    let carries_data = |text: &str| text.contains("czNjcmV0") || text.contains("\"data\"");
    let (code, text) = raw_text(&cluster, "GET", base, "", None, Some(list_accept)).await?;
    assert_eq!(code, 200, "{text}");
    let list: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(list["kind"], "PartialObjectMetadataList");
    assert_eq!(list["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(list["items"][0]["metadata"]["name"], "creds");
    assert_eq!(list["items"][0]["metadata"]["labels"]["app"], "a");
    assert!(!carries_data(&text), "a metadata list carries data: {text}");
    let path = format!("{base}/creds");
    let (code, text) = raw_text(&cluster, "GET", &path, "", None, Some(accept)).await?;
    assert_eq!(code, 200, "{text}");
    assert!(!carries_data(&text), "a metadata get carries data: {text}");
    let watch = format!("{base}?watch=true&timeoutSeconds=1");
    let (code, text) = raw_text(&cluster, "GET", &watch, "", None, Some(accept)).await?;
    assert_eq!(code, 200, "{text}");
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or(""))?;
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["kind"], "PartialObjectMetadata");
    assert!(
        !carries_data(&text),
        "a metadata watch carries data: {text}"
    );

    let metadata: Api<kube::core::PartialObjectMeta<Secret>> =
        Api::namespaced(cluster.client(), "default");
    let mut changes = watcher(metadata, watcher::Config::default())
        .touched_objects()
        .boxed();
    let patched = api
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": "rotated"}})),
        )
        .await?
        .resource_version();
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(meta) = changes.try_next().await? {
            if meta.resource_version() == patched {
                return Ok::<_, anyhow::Error>(meta);
            }
        }
        anyhow::bail!("the metadata watch ended")
    })
    .await??;
    assert_eq!(seen.name_any(), "creds");
    Ok(())
}
