//! Events as `kubectl get events` shows them: a repeat of the same Event is counted on the first
//! one, and an Event with a new message is a new Event carrying that message. Every publish,
//! repeats included, is counted in `flotilla_events_total` under its reason's fixed label.

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
    let metrics = flotilla_operator::metrics::Metrics::new()?;
    let sink = EventSink::new(
        env.client.clone(),
        Reporter {
            controller: "flotilla".into(),
            instance: Some("test".into()),
        },
    )
    .counting(metrics.events.clone());
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
    let mut rolled_back = rollout_started("revision b failed its analysis");
    rolled_back.reason = "RolledBack".into();
    sink.publish(&rolled_back, &regarding).await?;
    let count = |reason: &str| metrics.events.with_label_values(&[reason]).get();
    if (count("other"), count("RolledBack"), count("FailedOver")) != (3, 1, 0) {
        bail!(
            "flotilla_events_total: other {}, RolledBack {}, FailedOver {}; expected 3, 1, 0",
            count("other"),
            count("RolledBack"),
            count("FailedOver")
        );
    }
    env.shutdown().await;
    Ok(())
}
