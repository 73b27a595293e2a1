//! Events as `kubectl get events` shows them: a repeat of the same Event is counted on the first
//! one, and an Event with a new message is a new Event carrying that message.

use crate::support::*;
use anyhow::{bail, Result};
use flotilla_operator::events::EventSink;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::ListParams;
use kube::runtime::events::{Event, EventType, Reporter};
use kube::Resource;

fn rollout_started(note: &str) -> Event {
    Event {
        type_: EventType::Normal,
        reason: "RolloutStarted".into(),
        note: Some(note.into()),
        action: "Rollout".into(),
        secondary: None,
    }
}

#[tokio::test]
async fn repeats_are_counted_and_new_messages_are_new_events() -> Result<()> {
    let env = start_without_operator("events").await?;
    let ms = env.create("users", spec("flotilla/users:0.1.0")).await?;
    let regarding = ms.object_ref(&());
    let sink = EventSink::new(
        env.client.clone(),
        Reporter {
            controller: "flotilla".into(),
            instance: Some("test".into()),
        },
    );
    sink.publish(&rollout_started("analysing revision a"), &regarding)
        .await?;
    sink.publish(&rollout_started("analysing revision a"), &regarding)
        .await?;
    sink.publish(&rollout_started("analysing revision b"), &regarding)
        .await?;

    let mut seen: Vec<(String, i32)> = env
        .api::<K8sEvent>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RolloutStarted"))
        .map(|e| {
            let count = e.series.map_or(1, |s| s.count);
            (e.note.unwrap_or_default(), count)
        })
        .collect();
    seen.sort();
    let want = vec![
        ("analysing revision a".to_string(), 2),
        ("analysing revision b".to_string(), 1),
    ];
    if seen != want {
        bail!("Events (note, count): {seen:?}, expected {want:?}");
    }
    env.shutdown().await;
    Ok(())
}
