use super::*;
use flotilla_crds::{
    ActiveTarget, FailoverStatus, MicroServiceSpec, MicroServiceStatus, RolloutPhase,
    RolloutStatus, TrafficStatus,
};
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use serde_json::json;

fn at(seconds: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn msvc(name: &str, status: MicroServiceStatus) -> MicroService {
    let mut m = MicroService::new(name, MicroServiceSpec::with_image("flotilla/users:0.1.0"));
    m.metadata.namespace = Some("default".into());
    m.metadata.generation = Some(2);
    m.status = Some(status);
    m
}

fn condition(type_: &str, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: format!("{reason} message"),
        observed_generation: Some(2),
        last_transition_time: Time(at(0)),
    }
}

fn pod(name: &str, labels: &[(&str, &str)], ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("127.2.0.7".into()),
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

fn own(serving: &str, service: &str) -> Vec<(String, String)> {
    vec![
        (labels::NAME.to_owned(), service.to_owned()),
        (labels::INSTANCE.to_owned(), service.to_owned()),
    ]
    .into_iter()
    .chain(std::iter::once((
        labels::serves(service),
        serving.to_owned(),
    )))
    .collect()
}

fn labelled(name: &str, labels: &[(String, String)], ready: bool) -> Pod {
    let pairs: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pod(name, &pairs, ready)
}

fn verdict(name: &str, healthy: bool) -> PodHealth {
    PodHealth {
        name: name.into(),
        healthy,
        last_probe: Some(if healthy { "ok" } else { "http 503" }.into()),
        consecutive_failures: Some(if healthy { 0 } else { 4 }),
        ..PodHealth::default()
    }
}

/// A service failed over and held on its fallback: the row says where the traffic goes, that
/// it is held, how many pods are healthy, the Ready condition and the rollout; Degraded shows
/// only while true, and a spec the operator has not seen yet is flagged.
#[test]
fn row_of_a_held_failover() {
    let m = msvc(
        "users",
        MicroServiceStatus {
            observed_generation: Some(1),
            ready: Some("2/2".into()),
            conditions: vec![
                condition("Ready", "True", "AsExpected"),
                condition("Degraded", "False", "AsExpected"),
            ],
            failover: Some(FailoverStatus {
                active: Some(ActiveTarget::Fallback),
                fallback: Some("users-standby".into()),
                held: Some(true),
                healthy_pods: Some(2),
                total_pods: Some(2),
                last_failover_time: Some(Time(at(10))),
                last_failover_reason: Some("held on fallback for maintenance".into()),
                ..FailoverStatus::default()
            }),
            rollout: Some(RolloutStatus {
                phase: RolloutPhase::Stable,
                stable_revision: Some("5d8f".into()),
                ..RolloutStatus::default()
            }),
            traffic: Some(TrafficStatus {
                requests_per_second: Some(20.0),
                p99_latency_millis: Some(41.5),
                ..TrafficStatus::default()
            }),
            ..MicroServiceStatus::default()
        },
    );
    let row = service_row(&m);
    assert_eq!(row.name, "users");
    assert_eq!(row.namespace, "default");
    assert_eq!(row.ready.as_deref(), Some("2/2"));
    assert_eq!(
        row.ready_condition.as_ref().map(|c| c.reason.as_str()),
        Some("AsExpected")
    );
    assert_eq!(row.degraded, None);
    let traffic = row.traffic.clone();
    assert_eq!(traffic.as_ref().and_then(|t| t.active), Some("fallback"));
    assert_eq!(
        traffic.as_ref().and_then(|t| t.fallback.as_deref()),
        Some("users-standby")
    );
    assert_eq!(traffic.as_ref().map(|t| t.held), Some(true));
    assert_eq!(
        traffic.as_ref().and_then(|t| t.last_failover_time),
        Some(at(10))
    );
    assert_eq!(row.rollout.as_ref().map(|r| r.phase), Some("Stable"));
    assert_eq!(
        row.requests.as_ref().and_then(|r| r.requests_per_second),
        Some(20.0)
    );
    assert!(!row.spec_observed);

    let json = serde_json::to_value(&row).unwrap_or_default();
    assert_eq!(json["traffic"]["active"], json!("fallback"));
    assert_eq!(json["traffic"]["healthyPods"], json!(2));
    assert_eq!(json["readyCondition"]["status"], json!("True"));
    assert_eq!(json["requests"]["requestsPerSecond"], json!(20.0));
    assert_eq!(json["requests"]["p99LatencyMillis"], json!(41.5));
    assert!(
        json["requests"].get("errorRatio").is_none(),
        "an absent figure is not shown as 0"
    );
    assert_eq!(json["specObserved"], json!(false));
}

/// A MicroService the operator has not touched yet still gets a row, with nothing made up.
#[test]
fn row_without_status() {
    let mut m = msvc("auth", MicroServiceStatus::default());
    m.status = None;
    let row = service_row(&m);
    assert_eq!(row.ready, None);
    assert_eq!(row.traffic, None);
    assert_eq!(row.rollout, None);
    assert_eq!(row.requests, None);
    assert_eq!(row.ready_condition, None);
}

/// A degraded service shows the reason; the fleet is ordered by namespace and name, and
/// computing it twice gives equal rows.
#[test]
fn fleet_is_ordered_and_degraded_shows() {
    let degraded = msvc(
        "orders",
        MicroServiceStatus {
            conditions: vec![condition("Degraded", "True", "Forbidden")],
            ..MicroServiceStatus::default()
        },
    );
    let mut other = msvc("auth", MicroServiceStatus::default());
    other.metadata.namespace = Some("apps".into());
    let input = [degraded, msvc("auth", MicroServiceStatus::default()), other];
    let rows = fleet(&input);
    let names: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.namespace.clone(), r.name.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("apps".to_owned(), "auth".to_owned()),
            ("default".to_owned(), "auth".to_owned()),
            ("default".to_owned(), "orders".to_owned()),
        ]
    );
    assert_eq!(
        rows[2].degraded.as_ref().map(|d| d.reason.as_str()),
        Some("Forbidden")
    );
    assert_eq!(rows, fleet(&input));
}

/// One service's pods: its stable and canary pods by its selector, each with its membership
/// label and the engine's verdict; during a failover the fallback's pods that carry its traffic,
/// with the fallback's own verdicts; pods of other services and other namespaces are left out.
#[test]
fn service_pods_with_verdicts_and_fallback_pods() {
    let users = msvc(
        "users",
        MicroServiceStatus {
            selector: Some(format!("{}=users,{}=users", labels::NAME, labels::INSTANCE)),
            failover: Some(FailoverStatus {
                active: Some(ActiveTarget::Fallback),
                pods: vec![verdict("users-a", false), verdict("users-canary-c", true)],
                ..FailoverStatus::default()
            }),
            ..MicroServiceStatus::default()
        },
    );
    let standby = msvc(
        "users-standby",
        MicroServiceStatus {
            failover: Some(FailoverStatus {
                pods: vec![verdict("users-standby-x", true)],
                ..FailoverStatus::default()
            }),
            ..MicroServiceStatus::default()
        },
    );
    let mut canary = own("false", "users");
    canary.push((labels::TRACK.to_owned(), labels::TRACK_CANARY.to_owned()));
    let mut fallback_pod = own("true", "users-standby");
    fallback_pod.push((labels::serves("users"), "true".to_owned()));
    let mut leaving = labelled("users-b", &own("true", "users"), true);
    leaving.metadata.deletion_timestamp = Some(Time(at(5)));
    let mut elsewhere = labelled("users-z", &own("true", "users"), true);
    elsewhere.metadata.namespace = Some("other".into());
    let pods = [
        leaving,
        labelled("users-a", &own("false", "users"), false),
        labelled("users-canary-c", &canary, true),
        labelled("users-standby-x", &fallback_pod, true),
        labelled("users-standby-y", &own("true", "users-standby"), true),
        labelled("auth-1", &own("true", "auth"), true),
        elsewhere,
    ];
    let view = service_view(&users, &[users.clone(), standby], &pods);
    // Name, track, membership label, verdict, owner.
    type Shown<'a> = (&'a str, Track, Option<bool>, Option<bool>, &'a str);
    let shown: Vec<Shown> = view
        .pods
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.track,
                p.serves,
                p.verdict.as_ref().map(|v| v.healthy),
                p.owner.as_str(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("users-a", Track::Stable, Some(false), Some(false), "users"),
            ("users-b", Track::Stable, Some(true), None, "users"),
            (
                "users-canary-c",
                Track::Canary,
                Some(false),
                Some(true),
                "users"
            ),
            (
                "users-standby-x",
                Track::Fallback,
                Some(true),
                Some(true),
                "users-standby"
            ),
        ]
    );
    let a = &view.pods[0];
    assert!(!a.ready);
    assert_eq!(a.phase, "Running");
    assert_eq!(
        view.pods[1].phase, "Terminating",
        "a pod being deleted says so"
    );
    assert_eq!(a.ip.as_deref(), Some("127.2.0.7"));
    assert_eq!(
        a.verdict.as_ref().and_then(|v| v.last_probe.as_deref()),
        Some("http 503")
    );
    assert_eq!(view.service.name, "users");
}

/// The selector the operator writes is read term by term; a form the dashboard does not
/// understand matches nothing rather than too much.
#[test]
fn selectors() {
    let labels: BTreeMap<String, String> = [("a", "1"), ("b", "2")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert!(selector_matches("a=1,b=2", &labels));
    assert!(selector_matches("a==1", &labels));
    assert!(!selector_matches("a=1,b=3", &labels));
    assert!(!selector_matches("a!=2", &labels));
    assert!(!selector_matches("a in (1)", &labels));
    assert!(!selector_matches("", &labels));
}
