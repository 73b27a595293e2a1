use std::collections::BTreeMap;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn requests_count_only_after_the_grace_period() {
    // Requests that race the close (inside the grace period) never make a pod sticky.
    let t0 = Instant::now();
    let mut w = StickyWatch::default();
    w.record(t0, true, Some(100.0));
    w.record(t0 + ms(1000), true, Some(150.0));
    assert_eq!(w.requests(), None);
    w.record(t0 + GRACE, true, Some(160.0));
    assert_eq!(w.requests(), Some(0));
    assert!(!w.sticky(t0 + GRACE));
}

#[test]
fn a_rising_counter_while_ejected_is_sticky_until_it_goes_quiet() {
    // Clients still reaching an ejected pod show as a rising counter; once it stops rising for
    // QUIET_AFTER the pod is no longer reported.
    let t0 = Instant::now();
    let mut w = StickyWatch::default();
    w.record(t0, true, None);
    w.record(t0 + GRACE, true, Some(10.0));
    w.record(t0 + GRACE + ms(1000), true, Some(12.0));
    assert!(!w.sticky(t0 + GRACE + ms(1000)), "2 < MIN_REQUESTS");
    let t = t0 + GRACE + ms(2000);
    w.record(t, true, Some(40.0));
    assert_eq!(w.requests(), Some(30));
    assert!(w.sticky(t));
    w.record(t + ms(1000), true, Some(40.0));
    assert!(w.sticky(t + ms(1000)));
    assert!(!w.sticky(t + QUIET_AFTER));
}

#[test]
fn back_in_traffic_or_a_counter_reset_starts_over() {
    // Serving pods are never sticky, and a restarted process's counter is a new baseline.
    let t0 = Instant::now();
    let mut w = StickyWatch::default();
    w.record(t0, true, None);
    w.record(t0 + GRACE, true, Some(10.0));
    w.record(t0 + GRACE + ms(500), true, Some(50.0));
    assert!(w.sticky(t0 + GRACE + ms(500)));
    w.record(t0 + GRACE + ms(600), true, Some(3.0));
    assert_eq!(w.requests(), Some(0));
    w.record(t0 + GRACE + ms(700), false, Some(90.0));
    assert_eq!(w, StickyWatch::default());
}

fn decision(active: Target, healthy: u32, fallback_healthy: u32) -> Decision {
    let members: BTreeMap<String, Membership> = [
        ("a".to_owned(), Membership::Out),
        ("b".to_owned(), Membership::Out),
        ("c".to_owned(), Membership::In),
    ]
    .into();
    Decision {
        active,
        panic: false,
        flapping: false,
        held: false,
        held_on_fallback: false,
        hold_waiting: false,
        healthy_pods: healthy,
        total_pods: 3,
        fallback_healthy_pods: fallback_healthy,
        primary_members: members,
        fallback_members: BTreeMap::new(),
        change: None,
        pod_changes: Vec::new(),
        invalid: None,
        message: String::new(),
    }
}

fn sticky_pods() -> Vec<StickyPod> {
    vec![
        StickyPod {
            name: "a".into(),
            requests: 5,
            failing: true,
        },
        StickyPod {
            name: "b".into(),
            requests: 50,
            failing: true,
        },
        StickyPod {
            name: "c".into(),
            requests: 500,
            failing: true,
        },
    ]
}

fn restart_policy() -> FailoverPolicy {
    FailoverPolicy {
        sticky: StickyAction::Restart,
        ..FailoverPolicy::default()
    }
}

#[test]
fn restart_picks_the_busiest_ejected_pod_only_when_opted_in() {
    // Report (the default) and Observe mode never restart; Restart takes the ejected pod with
    // the most requests, never a pod that is in traffic.
    let now = Instant::now();
    let pods = sticky_pods();
    let d = decision(Target::Primary, 1, 0);
    assert_eq!(
        pick_restart(&FailoverPolicy::default(), &d, &pods, None, now),
        None
    );
    let observe = FailoverPolicy {
        mode: Mode::Observe,
        ..restart_policy()
    };
    assert_eq!(pick_restart(&observe, &d, &pods, None, now), None);
    let picked = pick_restart(&restart_policy(), &d, &pods, None, now).map(|p| p.name.as_str());
    assert_eq!(picked, Some("b"));
}

#[test]
fn restarts_are_rate_limited_per_service() {
    // At most one restart per RESTART_INTERVAL.
    let now = Instant::now();
    let pods = sticky_pods();
    let d = decision(Target::Primary, 1, 0);
    let p = restart_policy();
    assert_eq!(pick_restart(&p, &d, &pods, Some(now), now + ms(1000)), None);
    assert!(pick_restart(&p, &d, &pods, Some(now), now + RESTART_INTERVAL).is_some());
}

#[test]
fn never_restart_while_the_target_is_short_of_pods() {
    // Below minHealthy on the active side, in panic, or with an invalid fallback nothing is
    // restarted; after a failover the fallback's healthy pods are what counts.
    let now = Instant::now();
    let pods = sticky_pods();
    let p = FailoverPolicy {
        min_healthy: 2,
        ..restart_policy()
    };
    assert_eq!(
        pick_restart(&p, &decision(Target::Primary, 1, 5), &pods, None, now),
        None
    );
    let mut panic = decision(Target::Primary, 2, 0);
    panic.panic = true;
    assert_eq!(pick_restart(&p, &panic, &pods, None, now), None);
    assert_eq!(
        pick_restart(&p, &decision(Target::Fallback, 0, 1), &pods, None, now),
        None
    );
    assert!(pick_restart(&p, &decision(Target::Fallback, 0, 2), &pods, None, now).is_some());
    let mut invalid = decision(Target::Primary, 2, 0);
    invalid.invalid = Some("no fallback".into());
    assert_eq!(pick_restart(&p, &invalid, &pods, None, now), None);
}

#[test]
fn a_healthy_pod_out_of_traffic_because_of_a_failover_is_never_restarted() {
    // During a failover every primary pod is out of traffic; one whose own probes pass is out
    // only because of the failover, and its clients sticking is no reason to delete it.
    let now = Instant::now();
    let mut pods = sticky_pods();
    for p in &mut pods {
        p.failing = false;
    }
    let d = decision(Target::Fallback, 3, 2);
    assert_eq!(pick_restart(&restart_policy(), &d, &pods, None, now), None);
    pods[0].failing = true;
    let picked = pick_restart(&restart_policy(), &d, &pods, None, now).map(|p| p.name.as_str());
    assert_eq!(picked, Some("a"), "the failing one may be restarted");
}

#[test]
fn the_global_cap_counts_restarts_of_every_service_within_its_window() {
    // At most GLOBAL_RESTARTS restarts a GLOBAL_WINDOW, whatever the number of services.
    let t0 = Instant::now();
    let mut recent = std::collections::VecDeque::new();
    for i in 0..GLOBAL_RESTARTS {
        assert!(global_room(&mut recent, t0 + ms(i as u64)));
        recent.push_back(t0 + ms(i as u64));
    }
    assert!(!global_room(&mut recent, t0 + ms(1000)));
    assert!(global_room(&mut recent, t0 + GLOBAL_WINDOW));
}

#[test]
fn the_recorded_restart_time_holds_the_rate_limit_across_leader_changes() {
    // A new leader remembers no restart; the time in status (written before the eviction) is
    // what keeps it from restarting another pod of the service within RESTART_INTERVAL.
    let now = Instant::now();
    let wall = jiff::Timestamp::from_second(1_800_000_000).expect("time");
    let ten_s_ago = wall - jiff::SignedDuration::from_secs(10);
    let last = last_restart(None, Some(ten_s_ago), now, wall);
    let d = decision(Target::Primary, 1, 0);
    let pods = sticky_pods();
    assert_eq!(pick_restart(&restart_policy(), &d, &pods, last, now), None);
    assert!(pick_restart(&restart_policy(), &d, &pods, last, now + ms(20_000)).is_some());
    assert_eq!(
        last_restart(Some(now), Some(ten_s_ago), now, wall),
        Some(now)
    );
    assert_eq!(last_restart(None, None, now, wall), None);
}
