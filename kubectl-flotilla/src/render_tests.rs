use super::*;
use flotilla_crds::{
    ActiveTarget, FailoverStatus, MicroServiceStatus, RolloutEvidence, RolloutStatus,
};
use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::api::events::v1::EventSeries;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};

fn spec() -> flotilla_crds::MicroServiceSpec {
    serde_json::from_value(serde_json::json!({"image": "flotilla/users:0.1.0"}))
        .unwrap_or_else(|e| panic!("a minimal spec parses: {e}"))
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn pod(name: &str, canary: bool, serving: Option<&str>, ready: bool) -> Pod {
    let mut labels = std::collections::BTreeMap::new();
    if canary {
        labels.insert(labels::TRACK.to_owned(), labels::TRACK_CANARY.to_owned());
    }
    if let Some(v) = serving {
        labels.insert(labels::serves("users"), v.to_owned());
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

/// A Deployment; the operator annotates only the canary's with its revision.
fn deployment(name: &str, revision: Option<&str>, ready: i32) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: revision.map(|r| {
                [(
                    flotilla_crds::annotations::REVISION.to_owned(),
                    r.to_owned(),
                )]
                .into()
            }),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            ..DeploymentSpec::default()
        }),
        status: Some(DeploymentStatus {
            ready_replicas: Some(ready),
            ..DeploymentStatus::default()
        }),
    }
}

fn event(reason: &str, note: &str, seconds: i64, count: Option<i32>) -> Event {
    Event {
        metadata: ObjectMeta::default(),
        reason: Some(reason.into()),
        note: Some(note.into()),
        type_: Some("Normal".into()),
        event_time: Some(MicroTime(at(seconds))),
        series: count.map(|count| EventSeries {
            count,
            last_observed_time: MicroTime(at(seconds)),
        }),
        ..Event::default()
    }
}

/// A guarded `users` under analysis, failed over to `users-backup`, with one ejected pod.
fn snapshot() -> Snapshot {
    let mut msvc = MicroService::new("users", spec());
    msvc.metadata.namespace = Some("shop".into());
    msvc.metadata.generation = Some(4);
    msvc.metadata.creation_timestamp = Some(Time(at(-7200)));
    msvc.status = Some(MicroServiceStatus {
        observed_generation: Some(4),
        ready: Some("2/2".into()),
        failover: Some(FailoverStatus {
            active: Some(ActiveTarget::Fallback),
            fallback: Some("users-backup".into()),
            healthy_pods: Some(1),
            total_pods: Some(3),
            last_failover_time: Some(Time(at(-30))),
            last_failover_reason: Some("1 of 3 pods healthy".into()),
            pods: vec![
                PodHealth {
                    name: "users-a".into(),
                    healthy: false,
                    last_probe: Some("http 503".into()),
                    last_probe_time: Some(Time(at(-1))),
                    consecutive_failures: Some(3),
                    error_ratio: Some(0.5),
                    ..PodHealth::default()
                },
                PodHealth {
                    name: "users-b".into(),
                    healthy: true,
                    last_probe: Some("ok".into()),
                    ..PodHealth::default()
                },
            ],
            ..FailoverStatus::default()
        }),
        rollout: Some(RolloutStatus {
            phase: RolloutPhase::Analyzing,
            stable_revision: Some("aaa111".into()),
            canary_revision: Some("bbb222".into()),
            ..RolloutStatus::default()
        }),
        ..MicroServiceStatus::default()
    });
    Snapshot {
        msvc,
        stable: Some(deployment("users", None, 2)),
        canary: Some(deployment("users-canary", Some("bbb222"), 1)),
        pods: vec![
            pod("users-a", false, Some(labels::SERVES_FALSE), true),
            pod("users-b", false, Some(labels::SERVES_TRUE), true),
            pod("users-canary-c", true, None, false),
        ],
        events: vec![
            event("RolloutStarted", "analysing bbb222", -90, None),
            event("FailedOver", "traffic to users-backup", -30, Some(2)),
        ],
    }
}

/// The tree nests pods under the Deployment they belong to (canary pods by their track label),
/// and each pod line carries its traffic membership and the engine's verdict with evidence.
#[test]
fn tree_nests_pods_with_their_verdicts() {
    let out = tree(&snapshot(), at(0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "MicroService shop/users");
    assert_eq!(lines[1], "  ready 2/2");
    assert_eq!(
        lines[2],
        "  traffic: fallback (users-backup) · 1/3 pods healthy"
    );
    assert_eq!(
        lines[3],
        "  rollout: Analyzing · stable revision aaa111 · canary revision bbb222"
    );
    assert_eq!(
        lines[4],
        "├── Deployment users (stable, revision aaa111) 2/2 ready"
    );
    assert_eq!(
        lines[5],
        "│   ├── Pod users-a Running ready · OUT of traffic · verdict UNHEALTHY (http 503, 3 failed in a row, 5xx ratio 0.50) 1s ago"
    );
    assert_eq!(
        lines[6],
        "│   └── Pod users-b Running ready · in traffic · verdict healthy (ok)"
    );
    assert_eq!(
        lines[7],
        "├── Deployment users-canary (canary, revision bbb222) 1/2 ready"
    );
    assert_eq!(
        lines[8],
        "│   └── Pod users-canary-c Running not-ready · not probed"
    );
    assert_eq!(lines[9], "└── Events (last 5)");
    assert_eq!(
        lines[10],
        "      90s Normal  RolloutStarted: analysing bbb222"
    );
    assert_eq!(
        lines[11],
        "      30s Normal  FailedOver (x2): traffic to users-backup"
    );
    assert_eq!(lines.len(), 12);
}

/// Before the operator's first reconcile there is no Deployment and no status: the tree says
/// so instead of failing.
#[test]
fn tree_of_a_new_microservice() {
    let mut msvc = MicroService::new("fresh", spec());
    msvc.metadata.namespace = Some("shop".into());
    msvc.metadata.generation = Some(1);
    let s = Snapshot {
        msvc,
        stable: None,
        canary: None,
        pods: vec![],
        events: vec![],
    };
    assert_eq!(
        tree(&s, at(0)),
        "MicroService shop/fresh\n  ready - · spec change not yet observed\n└── Deployment (not created yet)\n    └── (no pods)\n"
    );
}

/// A service probed only for its analysis (failover off) says so instead of naming a traffic
/// target; one that rolls without analysis shows no revision.
#[test]
fn observe_only_and_no_revision() {
    let mut s = snapshot();
    if let Some(st) = s.msvc.status.as_mut() {
        st.rollout = None;
        if let Some(f) = st.failover.as_mut() {
            f.active = None;
            f.fallback = None;
            f.observe_only = Some(true);
        }
    }
    s.canary = None;
    let out = tree(&s, at(0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[2],
        "  probed for the rollout's analysis (failover off) · 1/3 pods healthy"
    );
    assert_eq!(lines[3], "├── Deployment users (stable) 2/2 ready");
}

/// A maintenance hold shows on the traffic line, in the tree and in `list`; a hold asked for but
/// not yet in force says so.
#[test]
fn a_hold_shows_on_the_traffic_line() {
    let mut s = snapshot();
    s.msvc.spec.failover.hold_on_fallback = true;
    let waiting = tree(&s, at(0));
    assert_eq!(
        waiting.lines().nth(2),
        Some("  traffic: fallback (users-backup) · 1/3 pods healthy · hold on fallback asked, not in force yet")
    );
    if let Some(f) = s.msvc.status.as_mut().and_then(|st| st.failover.as_mut()) {
        f.held = Some(true);
    }
    let held = tree(&s, at(0));
    assert_eq!(
        held.lines().nth(2),
        Some("  traffic: fallback (users-backup, held) · 1/3 pods healthy")
    );
    let table = list(&[s.msvc], false, at(0));
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("fallback (users-backup, held)")),
        "{table}"
    );
}

/// `list` is a kubectl-style table; `-A` adds the namespace column first.
#[test]
fn list_is_a_table() {
    let s = snapshot();
    let mut other = MicroService::new("orders", spec());
    other.metadata.namespace = Some("shop".into());
    other.metadata.creation_timestamp = Some(Time(at(-45)));
    let out = list(&[s.msvc.clone(), other.clone()], false, at(0));
    assert_eq!(
        out,
        "NAME     READY   TRAFFIC                   ROLLOUT     REVISION   AGE\n\
         users    2/2     fallback (users-backup)   Analyzing   aaa111     2h\n\
         orders   -       -                         -           -          45s\n"
    );
    let all = list(&[other], true, at(0));
    assert!(all.starts_with("NAMESPACE   NAME"), "{all}");
    assert!(
        all.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("shop        orders")),
        "{all}"
    );
}

/// `why` tells the failover (still on the fallback, with the pods' evidence), the rollback with
/// its evidence, and the Events in order.
#[test]
fn why_tells_the_failover_and_the_rollback() {
    let mut s = snapshot();
    if let Some(r) = s.msvc.status.as_mut().and_then(|st| st.rollout.as_mut()) {
        r.phase = RolloutPhase::RolledBack;
        r.failed_revision = Some("bbb222".into());
        r.reason = Some("CanaryErrorRate".into());
        r.message = Some("5xx ratio above the stable pods'".into());
        r.last_transition_time = Some(Time(at(-10)));
        r.evidence = vec![RolloutEvidence {
            pod: "users-canary-c".into(),
            observation: "5xx ratio 0.50 vs stable 0.00".into(),
        }];
    }
    let out = why(&s, at(0));
    let expected = [
        "Traffic",
        "  2027-01-15T07:59:30Z (30s): failed over to users-backup: 1 of 3 pods healthy",
        "  traffic is still on the fallback",
        "  pods judged unhealthy now:",
        "    users-a http 503, 3 failed in a row, 5xx ratio 0.50",
        "Release",
        "  2027-01-15T07:59:50Z (10s): RolledBack (CanaryErrorRate)",
        "  5xx ratio above the stable pods'",
        "  failed revision bbb222; evidence:",
        "    users-canary-c: 5xx ratio 0.50 vs stable 0.00",
        "Events",
        "    90s Normal  RolloutStarted: analysing bbb222",
        "    30s Normal  FailedOver (x2): traffic to users-backup",
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
}

/// Ages read as kubectl prints them.
#[test]
fn ages() {
    assert_eq!(age(at(-5), at(0)), "5s");
    assert_eq!(age(at(-119), at(0)), "119s");
    assert_eq!(age(at(-600), at(0)), "10m");
    assert_eq!(age(at(-3 * 3600), at(0)), "3h");
    assert_eq!(age(at(-3 * 86_400), at(0)), "3d");
    assert_eq!(age(at(5), at(0)), "0s");
}
