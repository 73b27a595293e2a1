use super::*;
use flotilla_crds::{
    ActiveTarget, FailoverStatus, MicroServiceSpec, MicroServiceStatus, TrafficStatus,
};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::EventSeries;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn at_ms(millis: i64) -> Timestamp {
    at(0) + SignedDuration::from_millis(millis)
}

fn event(service: &str, reason: &str, kind: &str, seconds: i64) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{service}.{reason}.{seconds}")),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(at(seconds))),
        reason: Some(reason.into()),
        note: Some(format!("{reason} note")),
        type_: Some(
            if reason == "FailedOver" {
                "Warning"
            } else {
                "Normal"
            }
            .into(),
        ),
        regarding: Some(ObjectReference {
            kind: Some(kind.into()),
            name: Some(service.into()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

fn users(active: ActiveTarget, healthy: i32) -> MicroService {
    let mut m = MicroService::new(
        "users",
        MicroServiceSpec::with_image("flotilla/users:0.1.0"),
    );
    m.metadata.namespace = Some("default".into());
    m.status = Some(MicroServiceStatus {
        ready_replicas: Some(2),
        replicas: Some(2),
        failover: Some(FailoverStatus {
            active: Some(active),
            held: Some(active == ActiveTarget::Fallback),
            healthy_pods: Some(healthy),
            total_pods: Some(2),
            ..FailoverStatus::default()
        }),
        traffic: Some(TrafficStatus {
            requests_per_second: Some(10.0),
            error_ratio: Some(if healthy == 0 { 0.5 } else { 0.0 }),
            observed_at: None,
            ..TrafficStatus::default()
        }),
        ..MicroServiceStatus::default()
    });
    m
}

/// Every reason the operator publishes about traffic and releases has its kind; reasons the
/// timeline does not plot (a reconcile error, an apply) have none.
#[test]
fn kinds() {
    assert_eq!(kind_of("FailedOver"), Some(Kind::Failover));
    assert_eq!(kind_of("FailedBack"), Some(Kind::Failback));
    assert_eq!(kind_of("Flapping"), Some(Kind::Flapping));
    assert_eq!(kind_of("PodEjected"), Some(Kind::Ejection));
    assert_eq!(kind_of("PodReturned"), Some(Kind::Return));
    for r in [
        "RolloutStarted",
        "Promoted",
        "RolledBack",
        "RolloutHalted",
        "Undone",
        "ConfigChanged",
    ] {
        assert_eq!(kind_of(r), Some(Kind::Rollout), "{r}");
    }
    for r in [
        "Created",
        "Forbidden",
        "WouldEjectPod",
        "StickyPodRestarted",
    ] {
        assert_eq!(kind_of(r), None, "{r}");
    }
}

/// Samples are taken only when the figures change, and at most HISTORY_LIMIT are kept per
/// service, the oldest dropped first.
#[test]
fn history_records_changes_only_and_is_bounded() {
    let mut h = History::default();
    assert!(h.record(&users(ActiveTarget::Primary, 2), at(0)));
    assert!(!h.record(&users(ActiveTarget::Primary, 2), at(1)));
    assert!(h.record(&users(ActiveTarget::Primary, 1), at(2)));
    for i in 0..HISTORY_LIMIT as i64 {
        h.record(&users(ActiveTarget::Primary, (i % 2) as i32), at(10 + i));
    }
    let samples = h.samples("default", "users").map(|s| s.len());
    assert_eq!(samples, Some(HISTORY_LIMIT));
    let first = h
        .samples("default", "users")
        .and_then(|s| s.front())
        .map(|s| s.time);
    assert!(
        first.is_some_and(|t| t > at(2)),
        "the oldest samples were dropped"
    );
}

/// The timeline keeps the Events about MicroServices with a plotted reason, oldest first, with
/// the figures seen before each and the settled figures after it; a series counts once at its
/// last time; `only` narrows it to one service.
#[test]
fn entries_with_figures_around_them() {
    let mut h = History::default();
    h.record(&users(ActiveTarget::Primary, 2), at(0));
    // Half a second before the failover one pod is judged unhealthy; the status write that
    // comes with the failover is seen a moment before its Event's time.
    h.record(&users(ActiveTarget::Primary, 1), at_ms(99_500));
    h.record(&users(ActiveTarget::Fallback, 0), at_ms(99_900));
    h.record(&users(ActiveTarget::Fallback, 1), at(103));
    h.record(&users(ActiveTarget::Primary, 2), at(200));
    let mut repeated = event("users", "PodEjected", "MicroService", 90);
    repeated.series = Some(EventSeries {
        count: 3,
        last_observed_time: MicroTime(at(95)),
    });
    let events = [
        event("users", "FailedOver", "MicroService", 100),
        event("users", "Created", "MicroService", 50),
        event("users-abc", "Killing", "Pod", 60),
        event("auth", "RolloutStarted", "MicroService", 10),
        repeated,
        event("users", "FailedBack", "MicroService", 197),
    ];
    let t = timeline(&events, &h, None);
    let order: Vec<(&str, &str, Timestamp)> = t
        .entries
        .iter()
        .map(|e| (e.service.as_str(), e.reason.as_str(), e.time))
        .collect();
    assert_eq!(
        order,
        [
            ("auth", "RolloutStarted", at(10)),
            ("users", "PodEjected", at(95)),
            ("users", "FailedOver", at(100)),
            ("users", "FailedBack", at(197)),
        ]
    );
    let failover = &t.entries[2];
    assert_eq!(failover.kind, Kind::Failover);
    assert!(failover.warning);
    assert_eq!(failover.note, "FailedOver note");
    let before = failover.before.as_ref();
    assert_eq!(before.and_then(|s| s.active), Some("primary"));
    assert_eq!(
        before.and_then(|s| s.healthy_pods),
        Some(1),
        "the figures right before the switch, though seen less than a second before it"
    );
    let errors = |s: Option<&Sample>| {
        s.and_then(|s| s.requests.as_ref())
            .and_then(|r| r.error_ratio)
    };
    assert_eq!(errors(before), Some(0.0));
    let after = failover.after.as_ref();
    assert_eq!(after.and_then(|s| s.active), Some("fallback"));
    assert_eq!(after.map(|s| s.held), Some(true));
    assert_eq!(
        after.and_then(|s| s.healthy_pods),
        Some(1),
        "the last figures within the settling time"
    );
    // The failback's switch is seen 3 s after its Event (clocks differ): still found.
    let failback = &t.entries[3];
    assert_eq!(
        failback.before.as_ref().and_then(|s| s.active),
        Some("fallback")
    );
    assert_eq!(
        failback.after.as_ref().and_then(|s| s.active),
        Some("primary")
    );
    // The ejection (last seen at 95 s) is the pod judged unhealthy at 99.5 s.
    let ejection = &t.entries[1];
    assert_eq!(ejection.count, 3);
    assert_eq!(
        ejection.before.as_ref().and_then(|s| s.healthy_pods),
        Some(2)
    );
    assert_eq!(ejection.after.as_ref().map(|s| s.time), Some(at(103)));
    // An Event no sample shows: the figures by time alone.
    let rollout = timeline(
        &[event("users", "RolloutStarted", "MicroService", 150)],
        &h,
        None,
    );
    let figures = |s: &Option<Sample>| s.as_ref().map(|s| s.time);
    assert_eq!(figures(&rollout.entries[0].before), Some(at(103)));
    assert_eq!(
        figures(&rollout.entries[0].after),
        None,
        "nothing seen from 149 s to 165 s"
    );
    assert_eq!(t.entries[0].before, None, "auth was never sampled");
    assert_eq!(t.series.len(), 1);
    assert_eq!(t.series[0].samples.len(), 5);

    let only = timeline(&events, &h, Some(("default", "auth")));
    assert_eq!(only.entries.len(), 1);
    assert!(only.series.is_empty());
    assert_eq!(
        timeline(&events, &h, None),
        t,
        "the same input gives the same timeline"
    );
}
