//! Engine tests for the decider: verdicts in, decisions out. Each row is one scenario: a
//! starting state and a policy, then decisions at given seconds, each with the checks its
//! decision must pass. A failing check names its row, its decision and the check.

use std::time::{Duration, Instant};

use super::*;

/// A pod as a row writes it.
#[derive(Debug, Clone, Copy)]
struct Pod {
    name: &'static str,
    ready: bool,
    healthy: bool,
    /// For a failing pod: the second (after the row's start) its failure run began.
    failing_since: Option<u64>,
}

const fn pod(name: &'static str, ready: bool, healthy: bool) -> Pod {
    Pod {
        name,
        ready,
        healthy,
        failing_since: None,
    }
}

/// A kubelet-Ready pod that fails probing since second `since`.
const fn failing(name: &'static str, since: u64) -> Pod {
    Pod {
        failing_since: Some(since),
        ..pod(name, true, false)
    }
}

fn s(secs: u64, t0: Instant) -> Instant {
    t0 + Duration::from_secs(secs)
}

impl Pod {
    fn view(self, t0: Instant) -> PodView {
        PodView {
            name: self.name.to_owned(),
            kubelet_ready: self.ready,
            healthy: self.healthy,
            detected_from: self.failing_since.map(|secs| s(secs, t0)),
        }
    }
}

/// A primary pod's expected entry in `pod_changes`.
#[derive(Debug)]
struct Moved {
    pod: &'static str,
    to: Membership,
    failing_since: Option<u64>,
}

fn moved(pod: &'static str, to: Membership, failing_since: Option<u64>) -> Moved {
    Moved {
        pod,
        to,
        failing_since,
    }
}

/// What one decision must show.
#[derive(Debug)]
enum Check {
    /// Traffic goes to this target.
    Active(Target),
    Panic(bool),
    Flapping(bool),
    Held(bool),
    /// Traffic is on the fallback because a hold asks for it.
    HeldOnFallback(bool),
    /// A hold is asked for but waits for a usable fallback.
    HoldWaiting(bool),
    /// No service-level change.
    NoChange,
    /// Failed over, reporting the failure run that began at this second.
    FailedOver(Option<u64>),
    FailedBack,
    /// This primary pod has this membership.
    PrimaryPod(&'static str, Membership),
    /// This fallback pod has this membership.
    FallbackPod(&'static str, Membership),
    /// Every primary pod has this membership.
    AllPrimary(Membership),
    /// Exactly these primary pods are out of traffic, by name.
    Ejected(&'static [&'static str]),
    /// This many primary pods are out of traffic.
    EjectedCount(usize),
    HealthyPods(u32),
    /// The pod changes are exactly these primary pods' (none: no pod write).
    PodChanges(Vec<Moved>),
    /// The fallback pods among the pod changes are exactly these, by name.
    FallbackChanged(&'static [&'static str]),
    /// The primary membership equals the previous decision's.
    SameMembers,
    /// The configuration problem reported, if any.
    Invalid(Option<&'static str>),
    /// Some configuration problem is reported.
    InvalidReported,
    /// The status message contains this.
    MessageContains(&'static str),
}

impl Check {
    fn assert(&self, d: &Decision, before: Option<&Decision>, t0: Instant, what: &str) {
        let what = format!("{what}: {self:?}");
        let ejected = || -> Vec<&str> {
            d.primary_members
                .iter()
                .filter(|(_, m)| **m == Membership::Out)
                .map(|(n, _)| n.as_str())
                .collect()
        };
        match self {
            Check::Active(t) => assert_eq!(d.active, *t, "{what}"),
            Check::Panic(p) => assert_eq!(d.panic, *p, "{what}"),
            Check::Flapping(f) => assert_eq!(d.flapping, *f, "{what}"),
            Check::Held(h) => assert_eq!(d.held, *h, "{what}"),
            Check::HeldOnFallback(h) => assert_eq!(d.held_on_fallback, *h, "{what}"),
            Check::HoldWaiting(h) => assert_eq!(d.hold_waiting, *h, "{what}"),
            Check::NoChange => assert_eq!(d.change, None, "{what}"),
            Check::FailedOver(since) => match &d.change {
                Some(Change::FailedOver { detected_from, .. }) => {
                    assert_eq!(*detected_from, since.map(|x| s(x, t0)), "{what}")
                }
                other => panic!("{what}: expected a failover, got {other:?}"),
            },
            Check::FailedBack => assert!(
                matches!(d.change, Some(Change::FailedBack { .. })),
                "{what}: got {:?}",
                d.change
            ),
            Check::PrimaryPod(name, m) => {
                assert_eq!(d.primary_members.get(*name), Some(m), "{what}")
            }
            Check::FallbackPod(name, m) => {
                assert_eq!(d.fallback_members.get(*name), Some(m), "{what}")
            }
            Check::AllPrimary(m) => assert!(
                d.primary_members.values().all(|x| x == m),
                "{what}: got {:?}",
                d.primary_members
            ),
            Check::Ejected(names) => assert_eq!(ejected(), *names, "{what}"),
            Check::EjectedCount(n) => assert_eq!(ejected().len(), *n, "{what}"),
            Check::HealthyPods(n) => assert_eq!(d.healthy_pods, *n, "{what}"),
            Check::PodChanges(want) => {
                let want: Vec<PodChange> = want
                    .iter()
                    .map(|m| PodChange {
                        pod: m.pod.into(),
                        fallback: false,
                        to: m.to,
                        detected_from: m.failing_since.map(|x| s(x, t0)),
                    })
                    .collect();
                assert_eq!(d.pod_changes, want, "{what}");
            }
            Check::FallbackChanged(names) => {
                let got: Vec<&str> = d
                    .pod_changes
                    .iter()
                    .filter(|c| c.fallback)
                    .map(|c| c.pod.as_str())
                    .collect();
                assert_eq!(got, *names, "{what}");
            }
            Check::SameMembers => assert_eq!(
                Some(&d.primary_members),
                before.map(|b| &b.primary_members),
                "{what}"
            ),
            Check::Invalid(want) => assert_eq!(d.invalid.as_deref(), *want, "{what}"),
            Check::InvalidReported => assert!(d.invalid.is_some(), "{what}"),
            Check::MessageContains(part) => {
                assert!(d.message.contains(part), "{what}: got {:?}", d.message)
            }
        }
    }
}

/// One decision of a [`Case`]: the pods seen at second `at` and what the decision must show.
struct Step {
    at: u64,
    primary: Vec<Pod>,
    /// The fallback's pods and whether its port name matches the primary's; `None`: the
    /// fallback was not found.
    fallback: Option<(Vec<Pod>, bool)>,
    /// `holdOnFallback` for this decision, when it differs from the case's policy.
    hold: Option<bool>,
    checks: Vec<Check>,
}

/// A decision at second `secs` with these primary pods and no fallback found.
fn at(secs: u64, primary: &[Pod]) -> Step {
    Step {
        at: secs,
        primary: primary.to_vec(),
        fallback: None,
        hold: None,
        checks: Vec::new(),
    }
}

impl Step {
    fn fallback(self, pods: &[Pod]) -> Self {
        Self {
            fallback: Some((pods.to_vec(), true)),
            ..self
        }
    }
    /// A fallback whose container port name differs from the primary's.
    fn fallback_on_another_port(self, pods: &[Pod]) -> Self {
        Self {
            fallback: Some((pods.to_vec(), false)),
            ..self
        }
    }
    /// The decision is made with `holdOnFallback` set to `on`.
    fn hold(self, on: bool) -> Self {
        Self {
            hold: Some(on),
            ..self
        }
    }
    fn expect(self, checks: impl IntoIterator<Item = Check>) -> Self {
        Self {
            checks: checks.into_iter().collect(),
            ..self
        }
    }
}

/// A named scenario: the state the decider starts from, the policy, and its decisions in order.
struct Case {
    name: &'static str,
    start: ServiceState,
    policy: FailoverPolicy,
    steps: Vec<Step>,
}

/// A scenario resumed on the primary with [`policy`].
fn case(name: &'static str, steps: Vec<Step>) -> Case {
    Case {
        name,
        start: ServiceState::resume(Target::Primary),
        policy: policy(),
        steps,
    }
}

impl Case {
    fn policy(self, policy: FailoverPolicy) -> Self {
        Self { policy, ..self }
    }
    fn start(self, start: ServiceState) -> Self {
        Self { start, ..self }
    }
}

/// A policy with a declared fallback and defaults otherwise.
fn policy() -> FailoverPolicy {
    FailoverPolicy {
        fallback: Some("auth-backup".to_owned()),
        ..FailoverPolicy::default()
    }
}

fn run(cases: Vec<Case>) {
    for case in cases {
        let t0 = Instant::now();
        let mut st = case.start;
        let mut before: Option<Decision> = None;
        for (i, step) in case.steps.iter().enumerate() {
            let what = format!("{}, decision {i} at {}s", case.name, step.at);
            let primary: Vec<PodView> = step.primary.iter().map(|p| p.view(t0)).collect();
            let fallback_pods: Vec<PodView> = step
                .fallback
                .iter()
                .flat_map(|(pods, _)| pods.iter().map(|p| p.view(t0)))
                .collect();
            let fallback = step.fallback.as_ref().map(|(_, matches)| FallbackView {
                pods: &fallback_pods,
                port_name_matches: *matches,
            });
            let mut policy = case.policy.clone();
            policy.hold_on_fallback = step.hold.unwrap_or(policy.hold_on_fallback);
            let d = decide(&mut st, &policy, &primary, fallback, s(step.at, t0));
            for check in &step.checks {
                check.assert(&d, before.as_ref(), t0, &what);
            }
            before = Some(d);
        }
    }
}

fn one_decision_cases() -> Vec<Case> {
    use Check::*;
    use Membership::{In, Out};
    use Target::{Fallback, Primary};
    let eight = [
        pod("ok0", true, true),
        pod("ok1", true, true),
        pod("ok2", true, true),
        pod("ok3", true, true),
        pod("ok4", true, true),
        failing("late", 3),
        failing("early", 1),
        failing("mid", 2),
    ];
    let one_of_four = [
        pod("a", true, true),
        failing("b", 0),
        failing("c", 0),
        failing("d", 0),
    ];
    vec![
        // Flotilla never takes over from the kubelet: an unready pod keeps its label "true".
        case(
            "pods the kubelet does not consider ready keep the default",
            vec![at(0, &[pod("a", true, true), pod("b", false, false)])
                .expect([PrimaryPod("b", In), PodChanges(vec![])])],
        ),
        // Probing that fails every pod does not black-hole a service that has no usable
        // fallback.
        case(
            "all failing without fallback panics and keeps ready pods",
            vec![at(
                1,
                &[failing("a", 0), failing("b", 0), pod("c", false, false)],
            )
            .expect([
                Panic(true),
                Active(Primary),
                AllPrimary(In),
                MessageContains("panic"),
            ])],
        ),
        // Failover moves traffic to the fallback's healthy Ready pods only.
        case(
            "all failing with healthy fallback fails over to its healthy pods",
            vec![at(2, &[failing("a", 0), failing("b", 1)])
                .fallback(&[
                    pod("x", true, true),
                    pod("y", true, false),
                    pod("z", false, true),
                ])
                .expect([
                    Active(Fallback),
                    Panic(false),
                    FailedOver(Some(1)),
                    AllPrimary(Out),
                    FallbackPod("x", In),
                    FallbackPod("y", Out),
                    FallbackPod("z", Out),
                    FallbackChanged(&["x"]),
                ])],
        ),
        // A fallback without minHealthy healthy pods is not used; the primary panics instead.
        case(
            "never fails over into an unhealthy fallback",
            vec![at(1, &[failing("a", 0)])
                .fallback(&[pod("x", true, false)])
                .expect([Active(Primary), Panic(true), NoChange])],
        ),
        // The threshold is minHealthy, not "all pods down".
        case(
            "minHealthy above one fails over with some pods left",
            vec![at(0, &[pod("a", true, true), failing("b", 0)])
                .fallback(&[pod("x", true, true), pod("y", true, true)])
                .expect([Active(Fallback)])],
        )
        .policy(FailoverPolicy {
            min_healthy: 2,
            ..policy()
        }),
        // A fallback whose port name differs cannot receive the primary Service's traffic.
        case(
            "port name mismatch is reported and blocks failover",
            vec![at(0, &[failing("a", 0)])
                .fallback_on_another_port(&[pod("x", true, true)])
                .expect([Active(Primary), InvalidReported])],
        ),
        // A fallback named in the policy but absent from the cluster is a configuration
        // problem, and the primary keeps its traffic (with panic protection) rather than going
        // nowhere.
        case(
            "a declared fallback that does not exist is reported and never used",
            vec![at(0, &[failing("a", 0)]).expect([
                Active(Primary),
                Invalid(Some("the fallback MicroService does not exist")),
            ])],
        ),
        // Without a declared fallback there is nothing to report.
        case(
            "no declared fallback reports nothing",
            vec![at(0, &[failing("a", 0)]).expect([Invalid(None)])],
        )
        .policy(FailoverPolicy::default()),
        // With a 25 % cap on 8 pods only 2 failing pods leave traffic, the earliest detected
        // first.
        case(
            "max ejection percent caps ejections, earliest detected first",
            vec![at(4, &eight).expect([Ejected(&["early", "mid"])])],
        )
        .policy(FailoverPolicy {
            max_ejection_percent: 25,
            ..policy()
        }),
        // The default (100) ejects every failing pod as before.
        case(
            "the default max ejection percent ejects every failing pod",
            vec![at(4, &eight).expect([EjectedCount(3)])],
        ),
        // A cap that rounds down to zero still lets one pod go.
        case(
            "a max ejection percent that rounds to zero ejects one pod",
            vec![at(4, &eight).expect([EjectedCount(1)])],
        )
        .policy(FailoverPolicy {
            max_ejection_percent: 0,
            ..policy()
        }),
        // With a 50 % panic threshold, 1 healthy pod of 4 panics (all Ready pods serve).
        case(
            "panic threshold keeps ready pods serving",
            vec![at(1, &one_of_four).expect([Panic(true), AllPrimary(In)])],
        )
        .policy(FailoverPolicy {
            fallback: None,
            panic_threshold_percent: 50,
            ..FailoverPolicy::default()
        }),
        // The default threshold (0) panics only when no pod passes, so the 3 failing pods
        // leave.
        case(
            "the default panic threshold ejects failing pods while one passes",
            vec![at(1, &one_of_four).expect([Panic(false), EjectedCount(3)])],
        )
        .policy(FailoverPolicy {
            fallback: None,
            ..FailoverPolicy::default()
        }),
    ]
}

#[test]
fn one_decision_from_a_fresh_state() {
    // Each row decides once: Ready pods are never taken from the kubelet, failover needs a
    // usable fallback, a missing or mismatched fallback is reported, ejection is capped and
    // panic keeps Ready pods serving.
    run(one_decision_cases());
}

fn sequence_cases() -> Vec<Case> {
    use Check::*;
    use Membership::{In, Out};
    use Target::{Fallback, Primary};
    let backup = [pod("x", true, true)];
    let up = [pod("a", true, true)];
    let down = [failing("a", 0)];
    let both_up = [pod("a", true, true), pod("b", true, true)];
    vec![
        // With all pods healthy nothing moves, and deciding again reports no change (no write).
        case(
            "healthy service keeps everything and repeats no changes",
            vec![
                at(0, &both_up).expect([
                    Active(Primary),
                    Panic(false),
                    Flapping(false),
                    NoChange,
                    AllPrimary(In),
                    PodChanges(vec![]),
                ]),
                at(1, &both_up).expect([SameMembers, PodChanges(vec![])]),
            ],
        ),
        // A Ready pod that fails probing leaves; once healthy again it returns.
        case(
            "failing ready pod is ejected and returned",
            vec![
                at(1, &[pod("a", true, true), failing("b", 0)]).expect([
                    PrimaryPod("b", Out),
                    PrimaryPod("a", In),
                    HealthyPods(1),
                    PodChanges(vec![moved("b", Out, Some(0))]),
                ]),
                at(2, &both_up)
                    .expect([PrimaryPod("b", In), PodChanges(vec![moved("b", In, None)])]),
            ],
        ),
        // A primary that is still starting keeps its traffic; a rollout is not a flip.
        case(
            "a service that was never healthy does not fail over",
            vec![
                at(0, &[pod("a", false, false)])
                    .fallback(&backup)
                    .expect([Active(Primary)]),
                at(1, &up).fallback(&backup),
                at(2, &down).fallback(&backup).expect([Active(Fallback)]),
            ],
        )
        .start(ServiceState {
            ever_ok: false,
            ..ServiceState::default()
        }),
        // Traffic returns to the primary only after it has been healthy for recoverAfter.
        case(
            "failback waits for the recovery window",
            vec![
                at(0, &down).fallback(&backup).expect([Active(Fallback)]),
                at(5, &up).fallback(&backup).expect([Active(Fallback)]),
                // 9 s healthy is not enough.
                at(14, &up).fallback(&backup).expect([Active(Fallback)]),
                // A relapse restarts the window.
                at(15, &[failing("a", 14)]).fallback(&backup),
                at(16, &up).fallback(&backup).expect([Active(Fallback)]),
                at(25, &up).fallback(&backup).expect([Active(Fallback)]),
                at(26, &up).fallback(&backup).expect([
                    Active(Primary),
                    FailedBack,
                    PrimaryPod("a", In),
                    FallbackPod("x", Out),
                ]),
            ],
        ),
        // After maxFlaps flips in the window the target is held and Flapping is raised.
        case(
            "flapping holds the target until the window passes",
            vec![
                // Flip 1.
                at(0, &down).fallback(&backup),
                at(1, &up).fallback(&backup),
                // Flip 2.
                at(2, &up).fallback(&backup),
                // Flip 3.
                at(3, &down)
                    .fallback(&backup)
                    .expect([Active(Fallback), Flapping(true)]),
                at(4, &up).fallback(&backup),
                // Held.
                at(6, &up)
                    .fallback(&backup)
                    .expect([Active(Fallback), Held(true), Flapping(true)]),
                // Once the first flips leave the window, failback proceeds.
                at(61, &up).fallback(&backup).expect([Active(Primary)]),
            ],
        )
        .policy(FailoverPolicy {
            recover_after: Duration::from_secs(1),
            max_flaps: 3,
            flap_window: Duration::from_secs(60),
            ..policy()
        }),
        // Holding never keeps traffic on a fallback that has nothing healthy left.
        case(
            "a held fallback that dies is left anyway",
            vec![
                at(0, &down).fallback(&backup).expect([Active(Fallback)]),
                at(1, &down)
                    .fallback(&[pod("x", true, false)])
                    .expect([Active(Primary), Panic(true)]),
            ],
        )
        .policy(FailoverPolicy {
            max_flaps: 1,
            ..policy()
        }),
        // After a restart during failover the target stays until the primary proves itself
        // again.
        case(
            "resumed state keeps fallback for a full window",
            vec![
                at(0, &up)
                    .fallback(&backup)
                    .expect([Active(Fallback), NoChange]),
                at(10, &up).fallback(&backup).expect([Active(Primary)]),
            ],
        )
        .start(ServiceState::resume(Target::Fallback)),
        // A hold (maintenance) moves a healthy service to the fallback and keeps it there; the
        // move is a person's, so it is not a flap even with maxFlaps 1.
        case(
            "a hold moves a healthy primary's traffic and keeps it",
            vec![
                at(0, &up).fallback(&backup).hold(true).expect([
                    Active(Fallback),
                    FailedOver(None),
                    HeldOnFallback(true),
                    Flapping(false),
                    AllPrimary(Out),
                    FallbackPod("x", In),
                    MessageContains("maintenance"),
                ]),
                at(100, &up).fallback(&backup).hold(true).expect([
                    Active(Fallback),
                    NoChange,
                    HeldOnFallback(true),
                ]),
            ],
        )
        .policy(FailoverPolicy {
            max_flaps: 1,
            ..policy()
        }),
        // Released, the hold gives traffic back once the primary has been healthy for
        // recoverAfter, and that return is not a flap either.
        case(
            "a released hold fails back after the recovery window",
            vec![
                at(0, &up)
                    .fallback(&backup)
                    .hold(true)
                    .expect([Active(Fallback)]),
                at(1, &up).fallback(&backup).expect([
                    Active(Fallback),
                    HeldOnFallback(false),
                    NoChange,
                ]),
                at(10, &up).fallback(&backup).expect([
                    Active(Primary),
                    FailedBack,
                    Flapping(false),
                ]),
            ],
        )
        .policy(FailoverPolicy {
            max_flaps: 1,
            recover_after: Duration::from_secs(10),
            ..policy()
        }),
        // A hold never sends traffic to a fallback that cannot take it: it waits, and says so.
        case(
            "a hold waits for a usable fallback",
            vec![
                at(0, &up)
                    .fallback(&[pod("x", true, false)])
                    .hold(true)
                    .expect([
                        Active(Primary),
                        HoldWaiting(true),
                        HeldOnFallback(false),
                        MessageContains("traffic stays on primary"),
                    ]),
                at(1, &up).fallback(&backup).hold(true).expect([
                    Active(Fallback),
                    HoldWaiting(false),
                    HeldOnFallback(true),
                ]),
                // A held fallback that dies is left, as any fallback.
                at(2, &up)
                    .fallback(&[pod("x", true, false)])
                    .hold(true)
                    .expect([Active(Primary), HoldWaiting(true)]),
            ],
        ),
        // The flap limit holds automatic flips, never a person's hold.
        case(
            "a hold moves traffic while flapping holds automatic flips",
            vec![
                at(0, &down).fallback(&backup).expect([Active(Fallback)]),
                // The fallback dies: an urgent return, the second flip (limit 1).
                at(1, &up)
                    .fallback(&[pod("x", true, false)])
                    .expect([Active(Primary), Flapping(true)]),
                at(2, &up).fallback(&backup).hold(true).expect([
                    Active(Fallback),
                    Held(false),
                    HeldOnFallback(true),
                ]),
            ],
        )
        .policy(FailoverPolicy {
            max_flaps: 1,
            ..policy()
        }),
    ]
}

#[test]
fn decisions_over_time() {
    // Each row decides in sequence on one state: ejected pods return, failover waits for a
    // service that was once healthy, failback waits a full recovery window (also after a
    // restart), flapping holds the target unless it has nothing left to serve with, and a
    // maintenance hold moves traffic to a usable fallback regardless of health and flaps.
    run(sequence_cases());
}
