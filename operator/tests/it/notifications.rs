//! Notifications to a real webhook receiver (see [`crate::notify_receiver`]): the bodies the
//! receiver gets for Events published on kubesim, retries against a failing receiver, a
//! hanging receiver that publishing never waits for, and a failover of real `users` pods on
//! kubesim arriving at the receiver as a `FailedOver` notification.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_operator::events::EventSink;
use flotilla_operator::metrics::Metrics;
use flotilla_operator::notify::{Delivery, Format, Notifier, Outcome, UrlSource, WebhookConfig};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::ListParams;
use kube::runtime::events::{Event, EventType, Reporter};
use kube::Resource;
use serde_json::json;

use crate::notify_receiver::{Answer, Receiver};
use crate::support::{spec, start_without_operator, WAIT};

fn event(type_: EventType, reason: &str, action: &str, note: &str) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    }
}

fn failed_over() -> Event {
    event(
        EventType::Warning,
        "FailedOver",
        "Traffic",
        "every primary pod failed its probes",
    )
}

/// A webhook at `receiver` with a fast retry, as the tests want it.
fn webhook(receiver: &Receiver, format: Format) -> WebhookConfig {
    let mut config = WebhookConfig::new(UrlSource::Value(receiver.url.clone()));
    config.format = format;
    config.backoff = Duration::from_millis(20);
    config
}

/// A notifier counting into fresh operator metrics.
fn start(config: &WebhookConfig) -> Result<(Notifier, Delivery, Metrics)> {
    let metrics = Metrics::new()?;
    let (notifier, delivery) = Notifier::start(config, metrics.notifications.clone())?;
    Ok((notifier, delivery, metrics))
}

fn counted(metrics: &Metrics, outcome: Outcome) -> u64 {
    metrics
        .notifications
        .with_label_values(&[outcome.as_str()])
        .get()
}

/// Waits until `flotilla_notifications_total{result=outcome}` reaches `n` (a counter the API
/// server does not hold, so it is polled).
async fn until_counted(metrics: &Metrics, outcome: Outcome, n: u64) -> Result<()> {
    let what = format!("{n} notification(s) counted {}", outcome.as_str());
    flotilla_testkit::wait::poll(&what, WAIT, || async {
        Ok((counted(metrics, outcome) >= n).then_some(()))
    })
    .await
}

fn sink(client: &kube::Client, controller: &str, notifier: Notifier) -> EventSink {
    EventSink::new(
        client.clone(),
        Reporter {
            controller: controller.into(),
            instance: Some("notify-test".into()),
        },
    )
    .with_notifier(notifier)
}

/// A MicroService's reference, as the operator's Events name it.
fn regarding(ms: &flotilla_crds::MicroService) -> ObjectReference {
    ms.object_ref(&())
}

#[tokio::test]
async fn json_and_slack_bodies_carry_the_published_event() -> Result<()> {
    // The JSON body names the Event's reason, type, message, object, time and reporter; a
    // repeat counted on the same Event and a reason not configured send nothing; the Slack body
    // is one line of text.
    let env = start_without_operator("notify-bodies").await?;
    let ms = env.create("users", spec("flotilla/users:0.1.0")).await?;
    let mut json_receiver = Receiver::start(vec![Answer::Status(200)]).await?;
    let (notifier, _json_delivery, _) = start(&webhook(&json_receiver, Format::Json))?;
    let failover = sink(&env.client, "flotilla-failover", notifier);

    failover.publish(&failed_over(), &regarding(&ms)).await?;
    let got = json_receiver
        .next("the FailedOver notification", WAIT)
        .await?;
    ensure!(
        got.content_type.as_deref() == Some("application/json"),
        "content-type {:?}",
        got.content_type
    );
    let events = env.api::<K8sEvent>().list(&ListParams::default()).await?;
    let published = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("FailedOver"))
        .context("the FailedOver Event in the API")?;
    let event_time = published
        .event_time
        .as_ref()
        .map(|t| t.0.to_string())
        .context("eventTime")?;
    ensure!(
        got.body
            == json!({
                "reason": "FailedOver",
                "type": "Warning",
                "message": "every primary pod failed its probes",
                "action": "Traffic",
                "object": {
                    "apiVersion": "flotilla.rs/v1alpha1",
                    "kind": "MicroService",
                    "namespace": env.ns,
                    "name": "users",
                },
                "timestamp": event_time,
                "reportingController": "flotilla-failover",
                "reportingInstance": "notify-test",
            }),
        "JSON body {:#}",
        got.body
    );

    // The same Event again is a repeat (series count 2), and PodEjected is not notified by
    // default: the next request is about FailedBack, published after both.
    failover.publish(&failed_over(), &regarding(&ms)).await?;
    let ejected = event(EventType::Warning, "PodEjected", "Traffic", "pod users-0");
    failover.publish(&ejected, &regarding(&ms)).await?;
    let back = event(
        EventType::Normal,
        "FailedBack",
        "Traffic",
        "primary healthy",
    );
    failover.publish(&back, &regarding(&ms)).await?;
    let got = json_receiver
        .next("the FailedBack notification", WAIT)
        .await?;
    ensure!(got.body["reason"] == "FailedBack", "{:#}", got.body);
    let repeats: Vec<i32> = env
        .api::<K8sEvent>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedOver"))
        .map(|e| e.series.map_or(1, |s| s.count))
        .collect();
    ensure!(repeats == [2], "FailedOver Events' counts: {repeats:?}");

    let mut slack_receiver = Receiver::start(vec![Answer::Status(200)]).await?;
    let (notifier, _slack_delivery, _) = start(&webhook(&slack_receiver, Format::Slack))?;
    let operator = sink(&env.client, "flotilla-operator", notifier);
    let promoted = event(
        EventType::Normal,
        "Promoted",
        "Rollout",
        "revision 2 passed its analysis",
    );
    operator.publish(&promoted, &regarding(&ms)).await?;
    let got = slack_receiver.next("the Slack notification", WAIT).await?;
    let want = format!(
        "Normal Promoted MicroService {}/users: revision 2 passed its analysis \
         (flotilla-operator)",
        env.ns
    );
    ensure!(
        got.body == json!({ "text": want }),
        "Slack body {:#}",
        got.body
    );
    env.shutdown().await;
    Ok(())
}

/// An Event about a made-up MicroService, for tests that need no API server.
fn k8s_event(reason: &str) -> K8sEvent {
    K8sEvent {
        reason: Some(reason.into()),
        type_: Some("Warning".into()),
        note: Some("test".into()),
        regarding: Some(ObjectReference {
            kind: Some("MicroService".into()),
            namespace: Some("shop".into()),
            name: Some("users".into()),
            ..ObjectReference::default()
        }),
        ..K8sEvent::default()
    }
}

#[tokio::test]
async fn a_receiver_that_fails_once_gets_the_notification_again() -> Result<()> {
    // A 500 is retried after the backoff with the same body, and the 200 that follows counts
    // the notification as sent.
    let mut receiver = Receiver::start(vec![Answer::Status(500), Answer::Status(200)]).await?;
    let (notifier, _delivery, metrics) = start(&webhook(&receiver, Format::Json))?;
    notifier.notify(&k8s_event("FailedOver"));
    let first = receiver.next("the first attempt", WAIT).await?;
    let second = receiver.next("the retry", WAIT).await?;
    ensure!(first.body["reason"] == "FailedOver", "{:#}", first.body);
    ensure!(
        first.body == second.body,
        "{:#} then {:#}",
        first.body,
        second.body
    );
    until_counted(&metrics, Outcome::Sent, 1).await?;
    ensure!(counted(&metrics, Outcome::Failed) == 0);
    ensure!(!receiver.has_unread(), "a third request after the 200");
    Ok(())
}

#[tokio::test]
async fn a_refusal_is_not_retried_and_a_receiver_that_keeps_failing_is_given_up() -> Result<()> {
    // A 404 (a revoked webhook) is final after one request; a receiver answering 503 every
    // time gets the first attempt and `retries` more, then the notification counts as failed.
    let mut refusing = Receiver::start(vec![Answer::Status(404)]).await?;
    let (notifier, _delivery, metrics) = start(&webhook(&refusing, Format::Json))?;
    notifier.notify(&k8s_event("RolledBack"));
    refusing.next("the refused request", WAIT).await?;
    until_counted(&metrics, Outcome::Failed, 1).await?;
    ensure!(!refusing.has_unread(), "a 404 was retried");

    let mut failing = Receiver::start(vec![Answer::Status(503)]).await?;
    let mut config = webhook(&failing, Format::Json);
    config.retries = 2;
    let (notifier, _delivery, metrics) = start(&config)?;
    notifier.notify(&k8s_event("Flapping"));
    for attempt in 1..=3 {
        failing.next(&format!("attempt {attempt}"), WAIT).await?;
    }
    until_counted(&metrics, Outcome::Failed, 1).await?;
    ensure!(!failing.has_unread(), "more than 1 + 2 retries");
    ensure!(counted(&metrics, Outcome::Sent) == 0);
    Ok(())
}

#[tokio::test]
async fn a_hanging_receiver_does_not_hold_up_publishing() -> Result<()> {
    // While the receiver holds the first notification unanswered, further Events are still
    // published at once: they are in the API, one notification waits in the queue and one
    // that finds the queue full is dropped and counted; once the receiver answers, the queued
    // one is delivered.
    let env = start_without_operator("notify-hang").await?;
    let ms = env.create("users", spec("flotilla/users:0.1.0")).await?;
    let mut receiver = Receiver::start(vec![Answer::Hang, Answer::Status(200)]).await?;
    let mut config = webhook(&receiver, Format::Json);
    // Long enough that a publish waiting on delivery could never return within the test.
    config.timeout = Duration::from_secs(600);
    config.retries = 0;
    config.queue_capacity = 1;
    let (notifier, _delivery, metrics) = start(&config)?;
    let failover = sink(&env.client, "flotilla-failover", notifier);

    let within = |what: &'static str, ev: Event| {
        let (failover, oref) = (failover.clone(), regarding(&ms));
        flotilla_testkit::wait::within(what, WAIT, async move {
            Ok(failover.publish(&ev, &oref).await?)
        })
    };
    within("publishing FailedOver", failed_over()).await?;
    receiver
        .next("the FailedOver request (left hanging)", WAIT)
        .await?;
    let back = event(
        EventType::Normal,
        "FailedBack",
        "Traffic",
        "primary healthy",
    );
    within("publishing FailedBack while the receiver hangs", back).await?;
    let flapping = event(
        EventType::Warning,
        "Flapping",
        "Traffic",
        "holding fallback",
    );
    within("publishing Flapping while the receiver hangs", flapping).await?;

    let mut reasons: Vec<String> = env
        .api::<K8sEvent>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    reasons.sort();
    ensure!(
        reasons == ["FailedBack", "FailedOver", "Flapping"],
        "Events in the API: {reasons:?}"
    );
    ensure!(receiver.answered() == 0, "the receiver answered already");
    ensure!(
        counted(&metrics, Outcome::Dropped) == 1,
        "the notification that found the queue full is counted dropped"
    );

    receiver.release();
    let got = receiver.next("the queued FailedBack", WAIT).await?;
    ensure!(got.body["reason"] == "FailedBack", "{:#}", got.body);
    until_counted(&metrics, Outcome::Sent, 2).await?;
    env.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_failover_on_the_cluster_reaches_the_receiver() -> Result<()> {
    // The operator, configured with a webhook, fails a service over when every primary pod
    // turns unhealthy, and the receiver gets the failover writer's FailedOver notification
    // about that MicroService.
    use crate::failover_common::sim::{set_fault, FailoverSim, Sim};
    const PRIMARY: &str = "users";
    const FALLBACK: &str = "users-backup";

    let mut receiver = Receiver::start(vec![Answer::Status(200)]).await?;
    let config = webhook(&receiver, Format::Json);
    let sim = Sim::start_tuned(
        "notify-failover",
        None,
        move |c| c.notifications = Some(config.clone()),
        |_| {},
    )
    .await?;
    sim.create_users(FALLBACK, 1, |_| {}).await?;
    sim.create_users(PRIMARY, 2, |s| {
        s.failover.enabled = true;
        s.failover.fallback = Some(FALLBACK.into());
    })
    .await?;
    let primary = sim.ready_pods(PRIMARY, 2).await?;
    sim.ready_pods(FALLBACK, 1).await?;
    sim.wait("the engine to see the primary healthy", || async {
        let ms = sim.msvcs().get(PRIMARY).await?;
        let f = ms.status.and_then(|s| s.failover);
        Ok(f.filter(|f| f.healthy_pods == Some(2)).map(|_| ()))
    })
    .await?;
    for p in &primary {
        set_fault(p, r#"{"unhealthy": true}"#).await?;
    }
    let got = receiver.next_with_reason("FailedOver", WAIT).await;
    let got = sim.report_on(got).await?;
    let object = &got.body["object"];
    ensure!(
        object["kind"] == "MicroService"
            && object["namespace"] == sim.ns.as_str()
            && object["name"] == PRIMARY
            && got.body["type"] == "Warning"
            && got.body["reportingController"] == flotilla_crds::FAILOVER_FIELD_MANAGER,
        "FailedOver notification {:#}",
        got.body
    );
    let reasons = sim.event_reasons(PRIMARY).await?;
    ensure!(
        reasons.iter().any(|r| r == "FailedOver"),
        "the notification's Event is in the API: {reasons:?}"
    );
    sim.shutdown().await;
    Ok(())
}
