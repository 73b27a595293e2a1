//! Engine tests for the decider: verdicts in, decisions out.

use std::time::{Duration, Instant};

use super::*;

fn pod(name: &str, ready: bool, healthy: bool) -> PodView {
    PodView {
        name: name.to_owned(),
        kubelet_ready: ready,
        healthy,
        detected_from: None,
    }
}

fn failing(name: &str, since: Instant) -> PodView {
    PodView {
        detected_from: Some(since),
        ..pod(name, true, false)
    }
}

fn fb(pods: &[PodView]) -> Option<FallbackView<'_>> {
    Some(FallbackView {
        pods,
        port_name_matches: true,
    })
}

fn policy() -> FailoverPolicy {
    FailoverPolicy {
        fallback: Some("auth-backup".to_owned()),
        ..FailoverPolicy::default()
    }
}

fn s(secs: u64, t0: Instant) -> Instant {
    t0 + Duration::from_secs(secs)
}

#[test]
fn healthy_service_keeps_everything_and_repeats_no_changes() {
    // With all pods healthy nothing moves, and deciding again reports no change (no write).
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let primary = [pod("a", true, true), pod("b", true, true)];
    let d = decide(&mut st, &policy(), &primary, None, t0);
    assert_eq!(d.active, Target::Primary);
    assert!(!d.panic && !d.flapping && d.change.is_none());
    assert!(d.primary_members.values().all(|m| *m == Membership::In));
    assert!(d.pod_changes.is_empty());
    let again = decide(&mut st, &policy(), &primary, None, s(1, t0));
    assert_eq!(again.primary_members, d.primary_members);
    assert!(again.pod_changes.is_empty());
}

#[test]
fn failing_ready_pod_is_ejected_and_returned() {
    // A Ready pod that fails probing leaves; once healthy again it returns.
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let d = decide(
        &mut st,
        &policy(),
        &[pod("a", true, true), failing("b", t0)],
        None,
        s(1, t0),
    );
    assert_eq!(d.primary_members["b"], Membership::Out);
    assert_eq!(d.primary_members["a"], Membership::In);
    assert_eq!(d.healthy_pods, 1);
    assert_eq!(
        d.pod_changes,
        vec![PodChange {
            pod: "b".into(),
            fallback: false,
            to: Membership::Out,
            detected_from: Some(t0)
        }]
    );
    let d = decide(
        &mut st,
        &policy(),
        &[pod("a", true, true), pod("b", true, true)],
        None,
        s(2, t0),
    );
    assert_eq!(d.primary_members["b"], Membership::In);
    assert_eq!(d.pod_changes.len(), 1);
    assert_eq!(d.pod_changes[0].to, Membership::In);
}

#[test]
fn pods_the_kubelet_does_not_consider_ready_keep_the_default() {
    // Flotilla never takes over from the kubelet: an unready pod keeps its label "true".
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let d = decide(
        &mut st,
        &policy(),
        &[pod("a", true, true), pod("b", false, false)],
        None,
        t0,
    );
    assert_eq!(d.primary_members["b"], Membership::In);
    assert!(d.pod_changes.is_empty());
}

#[test]
fn all_failing_without_fallback_panics_and_keeps_ready_pods() {
    // Probing that fails every pod does not black-hole a service that has no usable fallback.
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let primary = [failing("a", t0), failing("b", t0), pod("c", false, false)];
    let d = decide(&mut st, &policy(), &primary, None, s(1, t0));
    assert!(d.panic);
    assert_eq!(d.active, Target::Primary);
    assert!(d.primary_members.values().all(|m| *m == Membership::In));
    assert!(d.message.contains("panic"));
}

#[test]
fn all_failing_with_healthy_fallback_fails_over_to_its_healthy_pods() {
    // Failover moves traffic to the fallback's healthy Ready pods only.
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let primary = [failing("a", t0), failing("b", s(1, t0))];
    let fallback = [
        pod("x", true, true),
        pod("y", true, false),
        pod("z", false, true),
    ];
    let d = decide(&mut st, &policy(), &primary, fb(&fallback), s(2, t0));
    assert_eq!(d.active, Target::Fallback);
    assert!(!d.panic);
    match &d.change {
        Some(Change::FailedOver { detected_from, .. }) => {
            assert_eq!(*detected_from, Some(s(1, t0)))
        }
        other => panic!("expected failover, got {other:?}"),
    }
    assert!(d.primary_members.values().all(|m| *m == Membership::Out));
    assert_eq!(d.fallback_members["x"], Membership::In);
    assert_eq!(d.fallback_members["y"], Membership::Out);
    assert_eq!(d.fallback_members["z"], Membership::Out);
    let added: Vec<_> = d.pod_changes.iter().filter(|c| c.fallback).collect();
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].pod, "x");
}

#[test]
fn a_service_that_was_never_healthy_does_not_fail_over() {
    // A primary that is still starting keeps its traffic; a rollout is not a flip.
    let t0 = Instant::now();
    let mut st = ServiceState {
        ever_ok: false,
        ..ServiceState::default()
    };
    let fallback = [pod("x", true, true)];
    let starting = [pod("a", false, false)];
    let d = decide(&mut st, &policy(), &starting, fb(&fallback), t0);
    assert_eq!(d.active, Target::Primary);
    decide(
        &mut st,
        &policy(),
        &[pod("a", true, true)],
        fb(&fallback),
        s(1, t0),
    );
    let d = decide(
        &mut st,
        &policy(),
        &[failing("a", t0)],
        fb(&fallback),
        s(2, t0),
    );
    assert_eq!(d.active, Target::Fallback);
}

#[test]
fn never_fails_over_into_an_unhealthy_fallback() {
    // A fallback without minHealthy healthy pods is not used; the primary panics instead.
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let fallback = [pod("x", true, false)];
    let d = decide(
        &mut st,
        &policy(),
        &[failing("a", t0)],
        fb(&fallback),
        s(1, t0),
    );
    assert_eq!(d.active, Target::Primary);
    assert!(d.panic);
    assert!(d.change.is_none());
}

#[test]
fn min_healthy_above_one_fails_over_with_some_pods_left() {
    // The threshold is minHealthy, not "all pods down".
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let pol = FailoverPolicy {
        min_healthy: 2,
        ..policy()
    };
    let fallback = [pod("x", true, true), pod("y", true, true)];
    let d = decide(
        &mut st,
        &pol,
        &[pod("a", true, true), failing("b", t0)],
        fb(&fallback),
        t0,
    );
    assert_eq!(d.active, Target::Fallback);
}

#[test]
fn failback_waits_for_the_recovery_window() {
    // Traffic returns to the primary only after it has been healthy for recoverAfter.
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let fallback = [pod("x", true, true)];
    decide(&mut st, &policy(), &[failing("a", t0)], fb(&fallback), t0);
    assert_eq!(st.active, Target::Fallback);
    let ok = [pod("a", true, true)];
    let d = decide(&mut st, &policy(), &ok, fb(&fallback), s(5, t0));
    assert_eq!(d.active, Target::Fallback);
    let d = decide(&mut st, &policy(), &ok, fb(&fallback), s(14, t0));
    assert_eq!(d.active, Target::Fallback, "9 s healthy is not enough");
    // A relapse restarts the window.
    decide(
        &mut st,
        &policy(),
        &[failing("a", s(14, t0))],
        fb(&fallback),
        s(15, t0),
    );
    let d = decide(&mut st, &policy(), &ok, fb(&fallback), s(16, t0));
    assert_eq!(d.active, Target::Fallback);
    let d = decide(&mut st, &policy(), &ok, fb(&fallback), s(25, t0));
    assert_eq!(d.active, Target::Fallback);
    let d = decide(&mut st, &policy(), &ok, fb(&fallback), s(26, t0));
    assert_eq!(d.active, Target::Primary);
    assert!(matches!(d.change, Some(Change::FailedBack { .. })));
    assert_eq!(d.primary_members["a"], Membership::In);
    assert_eq!(d.fallback_members["x"], Membership::Out);
}

#[test]
fn flapping_holds_the_target_until_the_window_passes() {
    // After maxFlaps flips in the window the target is held and Flapping is raised.
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let pol = FailoverPolicy {
        recover_after: Duration::from_secs(1),
        max_flaps: 3,
        flap_window: Duration::from_secs(60),
        ..policy()
    };
    let fallback = [pod("x", true, true)];
    let down = [failing("a", t0)];
    let up = [pod("a", true, true)];
    decide(&mut st, &pol, &down, fb(&fallback), s(0, t0)); // flip 1
    decide(&mut st, &pol, &up, fb(&fallback), s(1, t0));
    decide(&mut st, &pol, &up, fb(&fallback), s(2, t0)); // flip 2
    let d = decide(&mut st, &pol, &down, fb(&fallback), s(3, t0)); // flip 3
    assert_eq!(d.active, Target::Fallback);
    assert!(d.flapping);
    decide(&mut st, &pol, &up, fb(&fallback), s(4, t0));
    let d = decide(&mut st, &pol, &up, fb(&fallback), s(6, t0));
    assert_eq!(d.active, Target::Fallback, "held");
    assert!(d.held && d.flapping);
    // Once the first flips leave the window, failback proceeds.
    let d = decide(&mut st, &pol, &up, fb(&fallback), s(61, t0));
    assert_eq!(d.active, Target::Primary);
}

#[test]
fn a_held_fallback_that_dies_is_left_anyway() {
    // Holding never keeps traffic on a fallback that has nothing healthy left.
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let pol = FailoverPolicy {
        max_flaps: 1,
        ..policy()
    };
    let fallback = [pod("x", true, true)];
    decide(&mut st, &pol, &[failing("a", t0)], fb(&fallback), t0);
    assert_eq!(st.active, Target::Fallback);
    let dead = [pod("x", true, false)];
    let d = decide(&mut st, &pol, &[failing("a", t0)], fb(&dead), s(1, t0));
    assert_eq!(d.active, Target::Primary);
    assert!(d.panic);
}

#[test]
fn port_name_mismatch_is_reported_and_blocks_failover() {
    // A fallback whose port name differs cannot receive the primary Service's traffic.
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let fallback = [pod("x", true, true)];
    let view = Some(FallbackView {
        pods: &fallback,
        port_name_matches: false,
    });
    let d = decide(&mut st, &policy(), &[failing("a", t0)], view, t0);
    assert_eq!(d.active, Target::Primary);
    assert!(d.invalid.is_some());
}

#[test]
fn resumed_state_keeps_fallback_for_a_full_window() {
    // After a restart during failover the target stays until the primary proves itself again.
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Fallback);
    let fallback = [pod("x", true, true)];
    let ok = [pod("a", true, true)];
    let d = decide(&mut st, &policy(), &ok, fb(&fallback), t0);
    assert_eq!(d.active, Target::Fallback);
    assert!(d.change.is_none());
    let d = decide(&mut st, &policy(), &ok, fb(&fallback), s(10, t0));
    assert_eq!(d.active, Target::Primary);
}

#[test]
fn a_declared_fallback_that_does_not_exist_is_reported_and_never_used() {
    // A fallback named in the policy but absent from the cluster is a configuration problem, and
    // the primary keeps its traffic (with panic protection) rather than going nowhere.
    let t0 = Instant::now();
    let mut st = ServiceState::resume(Target::Primary);
    let d = decide(&mut st, &policy(), &[failing("a", t0)], None, t0);
    assert_eq!(d.active, Target::Primary);
    assert_eq!(
        d.invalid.as_deref(),
        Some("the fallback MicroService does not exist")
    );
    // Without a declared fallback there is nothing to report.
    let mut st = ServiceState::resume(Target::Primary);
    let none = FailoverPolicy::default();
    let d = decide(&mut st, &none, &[failing("a", t0)], None, t0);
    assert_eq!(d.invalid, None);
}

#[test]
fn max_ejection_percent_caps_ejections() {
    // With a 25 % cap on 8 pods only 2 failing pods leave traffic, the earliest detected first;
    // the default (100) ejects every failing pod as before.
    let t0 = Instant::now();
    let mut primary: Vec<PodView> = (0..5).map(|i| pod(&format!("ok{i}"), true, true)).collect();
    primary.push(failing("late", s(3, t0)));
    primary.push(failing("early", s(1, t0)));
    primary.push(failing("mid", s(2, t0)));
    let pol = FailoverPolicy {
        max_ejection_percent: 25,
        ..policy()
    };
    let d = decide(
        &mut ServiceState::resume(Target::Primary),
        &pol,
        &primary,
        None,
        s(4, t0),
    );
    let out: Vec<&str> = d
        .primary_members
        .iter()
        .filter(|(_, m)| **m == Membership::Out)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(out, vec!["early", "mid"]);
    let d = decide(
        &mut ServiceState::resume(Target::Primary),
        &policy(),
        &primary,
        None,
        s(4, t0),
    );
    let out = d
        .primary_members
        .values()
        .filter(|m| **m == Membership::Out)
        .count();
    assert_eq!(out, 3);
    // A cap that rounds down to zero still lets one pod go.
    let tiny = FailoverPolicy {
        max_ejection_percent: 0,
        ..policy()
    };
    let d = decide(
        &mut ServiceState::resume(Target::Primary),
        &tiny,
        &primary,
        None,
        s(4, t0),
    );
    let out = d
        .primary_members
        .values()
        .filter(|m| **m == Membership::Out)
        .count();
    assert_eq!(out, 1);
}

#[test]
fn panic_threshold_keeps_ready_pods_serving() {
    // With a 50 % panic threshold, 1 healthy pod of 4 panics (all Ready pods serve); the default
    // threshold (0) panics only when no pod passes, so the 3 failing pods leave.
    let t0 = Instant::now();
    let primary = [
        pod("a", true, true),
        failing("b", t0),
        failing("c", t0),
        failing("d", t0),
    ];
    let pol = FailoverPolicy {
        fallback: None,
        panic_threshold_percent: 50,
        ..FailoverPolicy::default()
    };
    let d = decide(
        &mut ServiceState::resume(Target::Primary),
        &pol,
        &primary,
        None,
        s(1, t0),
    );
    assert!(d.panic);
    assert!(d.primary_members.values().all(|m| *m == Membership::In));
    let plain = FailoverPolicy {
        fallback: None,
        ..FailoverPolicy::default()
    };
    let d = decide(
        &mut ServiceState::resume(Target::Primary),
        &plain,
        &primary,
        None,
        s(1, t0),
    );
    assert!(!d.panic);
    let out = d
        .primary_members
        .values()
        .filter(|m| **m == Membership::Out)
        .count();
    assert_eq!(out, 3);
}
