//! Property test of Flotilla's automatic actions over random histories: pod health changing,
//! failovers and failbacks, clients sticking to pods, and leadership moving between two
//! replicas. Each replica runs the real decider, the real restart choice and the real
//! leadership gate; the cluster between them is a model (pods with UIDs, the status field the
//! writer records before evicting). Whatever happens:
//! - a pod whose own probes pass is never restarted;
//! - two restarts of one service are at least `RESTART_INTERVAL` apart, across leader changes;
//! - a standby sends no verdict;
//! - every eviction names the UID of the pod it means;
//! - while traffic is on the primary, no more pods are out than `maxEjectionPercent` allows.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::decide::{decide, Membership, PodView, ServiceState, Target};
use super::engine::VerdictSigning;
use super::policy::{FailoverPolicy, StickyAction};
use super::sticky::{choose_restart, RestartLimits, StickyPod, RESTART_INTERVAL};
use crate::verdict_keys::VerdictKeys;
use crate::write::{Leadership, LeadershipSetter};

/// One step of a history.
#[derive(Debug, Clone)]
struct Step {
    /// Milliseconds that pass before the step.
    advance_ms: u64,
    /// Per primary pod: probes pass.
    healthy: Vec<bool>,
    /// Per primary pod: clients keep reaching it while it is out of traffic.
    sticky: Vec<bool>,
    /// Whether the fallback's pods pass probes.
    fallback_healthy: bool,
    /// 0: leadership stays; 1: the leader loses it; 2: the other replica takes over.
    leadership: u8,
    /// The writer's status write before an eviction fails.
    record_fails: bool,
}

fn step(pods: usize) -> impl Strategy<Value = Step> {
    (
        0u64..12_000,
        prop::collection::vec(prop::bool::weighted(0.6), pods),
        prop::collection::vec(any::<bool>(), pods),
        prop::bool::weighted(0.8),
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(advance_ms, healthy, sticky, fallback_healthy, leadership, record_fails)| Step {
                advance_ms,
                healthy,
                sticky,
                fallback_healthy,
                leadership,
                record_fails,
            },
        )
}

/// One operator replica: its decider state, its memory of restarts, its leadership.
struct Replica {
    state: ServiceState,
    remembered: Option<Instant>,
    recent: VecDeque<Instant>,
    setter: LeadershipSetter,
    signing: VerdictSigning,
}

impl Replica {
    fn new(keys: Arc<VerdictKeys>) -> Self {
        let (setter, leadership) = Leadership::new();
        Self {
            state: ServiceState::resume(Target::Primary),
            remembered: None,
            recent: VecDeque::new(),
            setter,
            signing: VerdictSigning { keys, leadership },
        }
    }
}

/// A pod of the model cluster.
#[derive(Debug, Clone)]
struct Pod {
    name: String,
    uid: Option<String>,
}

fn views(pods: &[Pod], healthy: &[bool]) -> Vec<PodView> {
    pods.iter()
        .zip(healthy)
        .map(|(p, h)| PodView {
            name: p.name.clone(),
            kubelet_ready: true,
            healthy: *h,
            detected_from: None,
        })
        .collect()
}

fn run(
    policy: &FailoverPolicy,
    pods: usize,
    uid_missing: usize,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let keys = Arc::new(VerdictKeys::ephemeral());
    let mut replicas = [Replica::new(keys.clone()), Replica::new(keys)];
    let mut leader: Option<usize> = Some(0);
    replicas[0].setter.lead_unbounded();
    let mut cluster: Vec<Pod> = (0..pods)
        .map(|i| Pod {
            name: format!("web-{i}"),
            uid: (i >= uid_missing).then(|| format!("uid-{i}")),
        })
        .collect();
    let mut generation = pods;
    let mut recorded: Option<jiff::Timestamp> = None;
    let mut evictions: Vec<Instant> = Vec::new();
    let start = Instant::now();
    let wall_start = jiff::Timestamp::from_second(1_800_000_000)
        .map_err(|e| TestCaseError::fail(format!("wall clock: {e}")))?;
    let mut elapsed = Duration::ZERO;
    for s in steps {
        elapsed += Duration::from_millis(s.advance_ms);
        let now = start + elapsed;
        let wall = wall_start
            + jiff::SignedDuration::try_from(elapsed)
                .map_err(|e| TestCaseError::fail(format!("elapsed: {e}")))?;
        match (s.leadership, leader) {
            (1, Some(l)) => {
                replicas[l].setter.stop();
                leader = None;
            }
            (2, current) => {
                let next = current.map_or(0, |l| 1 - l);
                if let Some(l) = current {
                    replicas[l].setter.stop();
                }
                replicas[next].setter.lead_unbounded();
                leader = Some(next);
            }
            _ => {}
        }
        let primary = views(&cluster, &s.healthy);
        let fallback: Vec<PodView> = (0..2)
            .map(|i| PodView {
                name: format!("backup-{i}"),
                kubelet_ready: true,
                healthy: s.fallback_healthy,
                detected_from: None,
            })
            .collect();
        for (i, r) in replicas.iter_mut().enumerate() {
            let leading = leader == Some(i);
            let d = decide(
                &mut r.state,
                policy,
                &primary,
                Some(super::decide::FallbackView {
                    pods: &fallback,
                    port_name_matches: true,
                }),
                now,
            );
            // A standby sends no verdict: the engine signs only with the keys this hands out.
            let signs = r.signing.keys_if_leading().is_some();
            prop_assert_eq!(signs, leading, "replica {} signs verdicts: {}", i, signs);
            if d.active == Target::Primary {
                let out = d
                    .primary_members
                    .values()
                    .filter(|m| **m == Membership::Out)
                    .count();
                let pct = usize::try_from(policy.max_ejection_percent).unwrap_or(100);
                let cap = (pods * pct / 100).max(1);
                prop_assert!(out <= cap, "{} pods out, cap {}", out, cap);
            }
            // As the engine does: sticky pods out of traffic, failing or not, go to the choice.
            let sticky: Vec<StickyPod> = cluster
                .iter()
                .zip(&s.sticky)
                .zip(&primary)
                .filter(|((p, st), _)| {
                    **st && d.primary_members.get(&p.name) == Some(&Membership::Out)
                })
                .map(|((p, _), v)| StickyPod {
                    name: p.name.clone(),
                    requests: 10,
                    failing: !v.healthy,
                })
                .collect();
            let uids: BTreeMap<String, Option<String>> = cluster
                .iter()
                .map(|p| (p.name.clone(), p.uid.clone()))
                .collect();
            let limits = RestartLimits {
                remembered: r.remembered,
                recorded,
                recent: &mut r.recent,
                now,
                wall,
            };
            let choice = choose_restart(
                policy,
                &d,
                &sticky,
                |name| uids.get(name).cloned().flatten(),
                limits,
            );
            let Some((pod, uid)) = choice else {
                continue;
            };
            r.remembered = Some(now);
            // The writer: only the leader writes; status first, the eviction only after it.
            if !leading || s.record_fails {
                continue;
            }
            recorded = Some(wall);
            let idx = cluster
                .iter()
                .position(|p| p.name == pod.name)
                .ok_or_else(|| TestCaseError::fail("evicted pod not in the cluster"))?;
            prop_assert_eq!(cluster[idx].uid.as_deref(), Some(uid.as_str()));
            prop_assert!(
                !primary[idx].healthy,
                "a healthy pod ({}) was restarted",
                pod.name
            );
            if let Some(last) = evictions.last() {
                prop_assert!(
                    now.saturating_duration_since(*last) >= RESTART_INTERVAL,
                    "two restarts {:?} apart",
                    now.saturating_duration_since(*last)
                );
            }
            evictions.push(now);
            // The Deployment replaces the pod: a new name and UID.
            cluster[idx] = Pod {
                name: format!("web-{generation}"),
                uid: Some(format!("uid-{generation}")),
            };
            generation += 1;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn automatic_actions_never_harm_a_healthy_service(
        pods in 2usize..6,
        uid_missing in 0usize..2,
        max_ejection_percent in prop_oneof![Just(100u32), Just(50u32), Just(25u32)],
        steps in prop::collection::vec(step(6), 1..60),
    ) {
        let policy = FailoverPolicy {
            fallback: Some("backup".into()),
            sticky: StickyAction::Restart,
            recover_after: Duration::from_secs(5),
            max_ejection_percent,
            ..FailoverPolicy::default()
        };
        let steps: Vec<Step> = steps
            .into_iter()
            .map(|mut s| {
                s.healthy.truncate(pods);
                s.sticky.truncate(pods);
                s
            })
            .collect();
        run(&policy, pods, uid_missing, &steps)?;
    }
}
