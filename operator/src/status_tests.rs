//! Unit tests of status computation.

use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
use k8s_openapi::jiff::Timestamp;

use super::*;

fn now() -> Time {
    Time(Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn later() -> Time {
    Time(Timestamp::from_second(1_700_000_100).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn dep(replicas: i32, gen: i64, observed: i64, updated: i32, ready: i32, total: i32) -> Deployment {
    Deployment {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            generation: Some(gen),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            ..Default::default()
        }),
        status: Some(DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(total),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            ..Default::default()
        }),
    }
}

fn inputs<'a>(d: Option<&'a Deployment>, missing: &'a [String], t: &'a Time) -> StatusInputs<'a> {
    StatusInputs {
        generation: Some(3),
        name: "auth",
        spec_replicas: Some(2),
        deployment: d,
        missing_dependencies: missing,
        sources: None,
        problem: None,
        previous: None,
        now: t,
    }
}

fn cond<'a>(s: &'a MicroServiceStatus, t: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("condition {t}"))
}

/// A complete rollout is Ready, not Progressing, not Degraded, and mirrors the counts.
#[test]
fn complete_rollout_is_ready() {
    let t = now();
    let d = dep(2, 5, 5, 2, 2, 2);
    let s = compute(inputs(Some(&d), &[], &t));
    assert_eq!(cond(&s, "Ready").status, "True");
    assert_eq!(cond(&s, "Ready").reason, "Available");
    assert_eq!(cond(&s, "Progressing").status, "False");
    assert_eq!(cond(&s, "Degraded").status, "False");
    assert_eq!(s.ready.as_deref(), Some("2/2"));
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(
        s.selector.as_deref(),
        Some("app.kubernetes.io/instance=auth,app.kubernetes.io/name=auth")
    );
    assert_eq!(cond(&s, "Ready").observed_generation, Some(3));
}

/// During a rollout (old pods left, or the Deployment has not observed its spec) the service is
/// Progressing and not Ready.
#[test]
fn rollout_in_progress() {
    let t = now();
    for d in [dep(2, 5, 5, 1, 2, 3), dep(2, 6, 5, 2, 2, 2)] {
        let s = compute(inputs(Some(&d), &[], &t));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Progressing").status, "True");
        assert_eq!(cond(&s, "Progressing").reason, "RollingOut");
    }
}

/// ProgressDeadlineExceeded on the Deployment makes the MicroService Degraded with that reason.
#[test]
fn deadline_exceeded_is_degraded() {
    let t = now();
    let mut d = dep(2, 5, 5, 1, 1, 2);
    if let Some(st) = d.status.as_mut() {
        st.conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            ..Default::default()
        }]);
    }
    let s = compute(inputs(Some(&d), &[], &t));
    assert_eq!(cond(&s, "Degraded").status, "True");
    assert_eq!(cond(&s, "Degraded").reason, "ProgressDeadlineExceeded");
    assert_eq!(cond(&s, "Progressing").status, "False");
}

/// A missing dependency is Degraded with reason DependencyMissing naming it.
#[test]
fn missing_dependency_is_degraded() {
    let t = now();
    let d = dep(2, 5, 5, 2, 2, 2);
    let missing = vec!["users".to_string()];
    let s = compute(inputs(Some(&d), &missing, &t));
    let c = cond(&s, "Degraded");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "DependencyMissing")
    );
    assert!(c.message.contains("users"));
}

/// A missing referenced Secret is Degraded with its own reason and message, ahead of a missing
/// dependency, while the pods that run stay Ready.
#[test]
fn missing_source_is_degraded() {
    let t = now();
    let d = dep(2, 5, 5, 2, 2, 2);
    let missing = vec!["users".to_string()];
    let mut i = inputs(Some(&d), &missing, &t);
    i.sources = Some(Problem {
        reason: "ConfigMissing",
        message: "env references Secret auth-secrets",
    });
    let s = compute(i);
    let c = cond(&s, "Degraded");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
        (
            "True",
            "ConfigMissing",
            "env references Secret auth-secrets"
        )
    );
    assert_eq!(cond(&s, "Ready").status, "True");
}

/// An invalid spec is Degraded with reason InvalidSpec and the field message.
#[test]
fn invalid_spec_is_degraded() {
    let t = now();
    let mut i = inputs(None, &[], &t);
    i.problem = Some(Problem {
        reason: "InvalidSpec",
        message: "spec.port: bad",
    });
    let s = compute(i);
    let c = cond(&s, "Degraded");
    assert_eq!(
        (c.reason.as_str(), c.message.as_str()),
        ("InvalidSpec", "spec.port: bad")
    );
}

/// A spec the admission policy refuses is not Ready even while an earlier Deployment serves:
/// Ready and Degraded both say PolicyRefused with the refusal's message.
#[test]
fn policy_refusal_is_not_ready() {
    let t = now();
    let d = dep(2, 1, 1, 2, 2, 2);
    let mut i = inputs(Some(&d), &[], &t);
    let message = "refused by the operator's policy: spec.image: \"evil/x:1\" is not allowed";
    i.problem = Some(Problem {
        reason: reasons::POLICY_REFUSED,
        message,
    });
    let s = compute(i);
    for type_ in ["Ready", "Degraded"] {
        let c = cond(&s, type_);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            (
                if type_ == "Ready" { "False" } else { "True" },
                "PolicyRefused",
                message
            ),
            "{type_}"
        );
    }
    assert_eq!(s.ready.as_deref(), Some("2/2"));
}

/// Recomputing an unchanged status keeps transition times and needs no write; the failover
/// engine's fields do not count as a difference.
#[test]
fn unchanged_status_needs_no_write() {
    let t = now();
    let d = dep(2, 5, 5, 2, 2, 2);
    let first = compute(inputs(Some(&d), &[], &t));
    let mut stored = first.clone();
    stored.failover = Some(flotilla_crds::FailoverStatus::default());
    stored.traffic = Some(flotilla_crds::TrafficStatus {
        requests_per_second: Some(3.0),
        ..Default::default()
    });
    stored.conditions.insert(
        0,
        Condition {
            type_: "FailedOver".into(),
            status: "False".into(),
            reason: "Primary".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: t.clone(),
        },
    );
    let t2 = later();
    let mut i = inputs(Some(&d), &[], &t2);
    i.previous = Some(&stored);
    let second = compute(i);
    assert_eq!(second, first);
    assert!(!needs_write(&second, Some(&stored)));
    assert!(needs_write(&second, None));
}

/// A status flip moves the transition time.
#[test]
fn transition_time_moves_on_change() {
    let t = now();
    let ready = dep(2, 5, 5, 2, 2, 2);
    let first = compute(inputs(Some(&ready), &[], &t));
    let rolling = dep(2, 6, 5, 2, 2, 2);
    let t2 = later();
    let mut i = inputs(Some(&rolling), &[], &t2);
    i.previous = Some(&first);
    let second = compute(i);
    assert_eq!(cond(&second, "Ready").last_transition_time, t2);
    assert_eq!(cond(&second, "Degraded").last_transition_time, t);
    assert!(needs_write(&second, Some(&first)));
}
