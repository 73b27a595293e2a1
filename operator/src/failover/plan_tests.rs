//! Tests for the write plans: nothing changed → no write; each difference → exactly its write.

use std::collections::BTreeMap;

use flotilla_crds::{conditions, labels, ActiveTarget, FailoverStatus, PodHealth, TrafficStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::failover::inventory::PodInfo;
use crate::failover::outputs::Member;
use crate::failover::policy::{FailoverPolicy, Mode, ProbePolicy};

fn key(n: &str) -> ObjKey {
    ObjKey::new("ns", n)
}

fn pod(name: &str, svc: &str, serves: Option<&str>) -> PodInfo {
    let mut m = BTreeMap::new();
    if let Some(v) = serves {
        m.insert(labels::serves("a"), v.to_owned());
    }
    PodInfo {
        key: key(name),
        service: svc.to_owned(),
        ip: None,
        ready: true,
        serves: m,
        uid: Some(format!("uid-{name}")),
        canary: false,
    }
}

fn inv(pods: Vec<PodInfo>) -> Inventory {
    Inventory {
        pods: pods.into_iter().map(|p| (p.key.clone(), p)).collect(),
        ..Inventory::default()
    }
}

fn cond(type_: &'static str, status: bool, reason: &'static str) -> CondSpec {
    CondSpec {
        type_,
        status,
        reason,
        message: "m".into(),
    }
}

fn desired(members: Vec<Member>, status: FailoverStatus) -> ServiceDesired {
    ServiceDesired {
        key: key("a"),
        mode: Mode::Enforce,
        label_key: labels::serves("a"),
        members,
        reports_failover: true,
        status,
        traffic: None,
        conditions: vec![
            cond(conditions::FAILED_OVER, false, "PrimaryServing"),
            cond(conditions::FLAPPING, false, "Stable"),
        ],
        serving: 1,
    }
}

fn member(n: &str, fallback: bool, to: Membership) -> Member {
    Member {
        pod: key(n),
        fallback,
        to,
    }
}

fn info(status: Option<FailoverStatus>, conds: Vec<Condition>) -> ServiceInfo {
    ServiceInfo {
        key: key("a"),
        uid: None,
        generation: Some(3),
        failover_enabled: true,
        analysing: false,
        probe: ProbePolicy::default(),
        failover: FailoverPolicy::default(),
        port_name: "http".into(),
        report_traffic: true,
        scrape_only: false,
        status,
        traffic: None,
        conditions: conds,
    }
}

fn t(secs: i64) -> Time {
    Time(jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

#[test]
fn labels_that_match_need_no_write() {
    // Nothing changed → no patch.
    let i = inv(vec![
        pod("a-1", "a", Some("true")),
        pod("b-1", "b", None),
        pod("b-2", "b", Some("true")),
    ]);
    let d = desired(
        vec![
            member("a-1", false, Membership::In),
            member("b-1", true, Membership::Out),
            member("b-2", true, Membership::In),
        ],
        FailoverStatus::default(),
    );
    assert!(label_patches(&d, &i).is_empty());
}

#[test]
fn each_difference_is_one_patch() {
    // Ejection writes "false", a missing label on a primary pod is restored, a fallback pod
    // leaving traffic loses the label, a gone pod is skipped.
    let i = inv(vec![
        pod("a-1", "a", Some("true")),
        pod("a-2", "a", None),
        pod("b-1", "b", Some("true")),
        pod("b-2", "b", Some("false")),
    ]);
    let d = desired(
        vec![
            member("a-1", false, Membership::Out),
            member("a-2", false, Membership::In),
            member("b-1", true, Membership::Out),
            member("b-2", true, Membership::Out),
            member("gone", false, Membership::Out),
        ],
        FailoverStatus::default(),
    );
    let p = label_patches(&d, &i);
    let got: Vec<_> = p.iter().map(|p| (p.pod.name.as_str(), p.value)).collect();
    assert_eq!(
        got,
        vec![
            ("a-1", Some("false")),
            ("a-2", Some("true")),
            ("b-1", None),
            ("b-2", None)
        ]
    );
    assert_eq!(
        p[2].body(),
        serde_json::json!({"metadata": {"labels": {"serves.flotilla.rs/a": null}}})
    );
}

fn status(healthy: i32, failures: i32) -> FailoverStatus {
    FailoverStatus {
        active: Some(ActiveTarget::Primary),
        healthy_pods: Some(healthy),
        pods: vec![PodHealth {
            name: "a-1".into(),
            healthy: healthy > 0,
            consecutive_failures: Some(failures),
            ..PodHealth::default()
        }],
        ..FailoverStatus::default()
    }
}

#[test]
fn status_writes_only_on_change_and_throttles_evidence() {
    // Same status → no write; a failure count alone → throttled write; a verdict → write now.
    let d = desired(vec![], status(1, 0));
    let now = t(1000);
    let first = status_plan(&d, &info(None, vec![]), &now);
    let StatusPlan::Now(body) = first else {
        panic!("first write expected, got {first:?}");
    };
    let conds: Vec<Condition> =
        serde_json::from_value(body["status"]["conditions"].clone()).expect("conditions");
    assert_eq!(conds.len(), 2);
    assert_eq!(conds[0].observed_generation, Some(3));
    let current = info(Some(status(1, 0)), conds.clone());
    assert_eq!(status_plan(&d, &current, &t(2000)), StatusPlan::Unchanged);
    let d2 = desired(vec![], status(1, 1));
    assert!(matches!(
        status_plan(&d2, &current, &t(2000)),
        StatusPlan::Evidence(_)
    ));
    let d3 = desired(vec![], status(0, 2));
    assert!(matches!(
        status_plan(&d3, &current, &t(2000)),
        StatusPlan::Now(_)
    ));
}

#[test]
fn transition_time_moves_only_when_the_condition_status_flips() {
    // lastTransitionTime follows API conventions.
    let d = desired(vec![], status(1, 0));
    let StatusPlan::Now(body) = status_plan(&d, &info(None, vec![]), &t(1000)) else {
        panic!("write expected");
    };
    let conds: Vec<Condition> =
        serde_json::from_value(body["status"]["conditions"].clone()).expect("conditions");
    let mut d2 = d.clone();
    d2.conditions[0].message = "other".into();
    let StatusPlan::Now(body) =
        status_plan(&d2, &info(Some(status(1, 0)), conds.clone()), &t(2000))
    else {
        panic!("write expected");
    };
    let c2: Vec<Condition> =
        serde_json::from_value(body["status"]["conditions"].clone()).expect("conditions");
    assert_eq!(c2[0].last_transition_time, t(1000));
    d2.conditions[0] = cond(conditions::FAILED_OVER, true, "FailedOver");
    let StatusPlan::Now(body) = status_plan(&d2, &info(Some(status(1, 0)), conds), &t(3000)) else {
        panic!("write expected");
    };
    let c3: Vec<Condition> =
        serde_json::from_value(body["status"]["conditions"].clone()).expect("conditions");
    assert_eq!(c3[0].last_transition_time, t(3000));
}

#[test]
fn a_report_without_conditions_claims_no_condition_list() {
    // A service probed only for a rollout analysis has no conditions: the body must not carry
    // an empty list, which would claim the reconciler's conditions for the failover manager.
    let mut d = desired(vec![], status(1, 0));
    d.conditions.clear();
    let StatusPlan::Now(body) = status_plan(&d, &info(None, vec![]), &t(1000)) else {
        panic!("first write expected");
    };
    assert!(body["status"].get("conditions").is_none(), "{body}");
    assert!(body["status"].get("failover").is_some());
}

fn figures(rps: f64) -> TrafficStatus {
    TrafficStatus {
        requests_per_second: Some(rps),
        window_seconds: Some(30),
        observed_at: Some(t(900)),
        ..TrafficStatus::default()
    }
}

#[test]
fn new_figures_are_written_at_once_and_the_same_ones_never() {
    // The engine publishes figures at most once an interval, so a change is written now; the
    // figures the status shows are no reason to write.
    let mut d = desired(vec![], status(1, 0));
    d.traffic = Some(figures(12.0));
    let StatusPlan::Now(body) = status_plan(&d, &info(None, vec![]), &t(1000)) else {
        panic!("first write expected");
    };
    assert_eq!(body["status"]["traffic"]["requestsPerSecond"], 12.0);
    let conds: Vec<Condition> =
        serde_json::from_value(body["status"]["conditions"].clone()).expect("conditions");
    let mut current = info(Some(status(1, 0)), conds);
    current.traffic = Some(figures(12.0));
    assert_eq!(status_plan(&d, &current, &t(2000)), StatusPlan::Unchanged);
    d.traffic = Some(figures(30.0));
    assert!(matches!(
        status_plan(&d, &current, &t(2000)),
        StatusPlan::Now(_)
    ));
}

#[test]
fn a_service_reporting_traffic_only_gets_no_failover_report() {
    // Figures alone: the body carries `traffic` and neither `failover` nor conditions, so an
    // earlier failover report is withdrawn by the same apply; with no figures either, nothing
    // to show is the withdrawal body, and nothing shown needs no write.
    let only = ServiceDesired::traffic_only(key("a"), labels::serves("a"), Some(figures(3.0)));
    let mut shown = info(Some(status(1, 0)), vec![]);
    let StatusPlan::Now(body) = status_plan(&only, &shown, &t(1000)) else {
        panic!("write expected");
    };
    assert_eq!(
        body["status"],
        serde_json::json!({"traffic": serde_json::to_value(figures(3.0)).unwrap_or_default()})
    );
    let none = ServiceDesired::traffic_only(key("a"), labels::serves("a"), None);
    assert_eq!(
        status_plan(&none, &shown, &t(1000)),
        StatusPlan::Now(withdrawal_body(&key("a")))
    );
    shown.status = Some(FailoverStatus::default());
    assert_eq!(status_plan(&none, &shown, &t(1000)), StatusPlan::Unchanged);
}
