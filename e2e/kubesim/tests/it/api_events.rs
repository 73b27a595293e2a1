//! Events written through `events.k8s.io/v1` (kube-rs `Recorder`) are visible as core Events,
//! which `kubectl get events` and `kubectl describe` read.

use std::time::Duration;

use anyhow::Result;
use flotilla_testkit::wait::poll;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent};
use kube::api::{ListParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource};
use serde_json::json;

use crate::support::{raw_text, start};

#[tokio::test]
async fn recorder_events_show_as_core_events() -> Result<()> {
    // An Event published by a kube-rs Recorder can be listed through the core API.
    let cluster = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "subject"}}))?;
    let cm = cms.create(&PostParams::default(), &cm).await?;
    let recorder = Recorder::new(
        cluster.client(),
        Reporter {
            controller: "test-controller".into(),
            instance: Some("pod-1".into()),
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Synced".into(),
        note: Some("all good".into()),
        action: "Sync".into(),
        secondary: None,
    };
    recorder.publish(&ev, &cm.object_ref(&())).await?;
    recorder.publish(&ev, &cm.object_ref(&())).await?;
    let core: Api<CoreEvent> = Api::namespaced(cluster.client(), "default");
    let found = poll("the core Event", Duration::from_secs(30), || async {
        let list = core
            .list(&ListParams::default().fields("involvedObject.name=subject"))
            .await?;
        Ok(list.items.into_iter().find(|e| e.count.unwrap_or(0) >= 2))
    })
    .await?;
    assert_eq!(found.message.as_deref(), Some("all good"));
    assert_eq!(found.reason.as_deref(), Some("Synced"));
    assert_eq!(
        found.source.and_then(|s| s.component).as_deref(),
        Some("test-controller")
    );

    // `kubectl get events` columns: LAST SEEN, TYPE, REASON, OBJECT, MESSAGE.
    let (code, text) = raw_text(
        &cluster,
        "GET",
        "/api/v1/namespaces/default/events",
        "",
        None,
        Some("application/json;as=Table;v=v1;g=meta.k8s.io"),
    )
    .await?;
    assert_eq!(code, 200);
    let table: serde_json::Value = serde_json::from_str(&text)?;
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        cols,
        vec!["Name", "Last Seen", "Type", "Reason", "Object", "Message"]
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[4], "configmap/subject");
    assert_eq!(cells[5], "all good");
    Ok(())
}
