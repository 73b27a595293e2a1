//! What the engine hands to the writer: desired pod membership, the status to show and the
//! one-off changes to announce. Built from decisions and pod evidence by pure functions.

use std::collections::BTreeMap;
use std::time::Instant;

use flotilla_crds::{
    conditions, ActiveTarget, FailoverStatus, PodHealth as PodEvidence, TrafficStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::decide::{Change, Decision, Membership, Target};
use super::inventory::ObjKey;
use super::pod_health::{Observation, PodHealth};
use super::policy::Mode;

/// The desired membership of one pod in a primary service's traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The pod.
    pub pod: ObjKey,
    /// Whether the pod belongs to the fallback service.
    pub fallback: bool,
    /// In or out.
    pub to: Membership,
}

/// A condition the engine wants on the MicroService.
#[derive(Debug, Clone, PartialEq)]
pub struct CondSpec {
    /// `conditions::FAILED_OVER` or `conditions::FLAPPING`.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// Everything the writer should make true for one service the engine decides or reports the
/// traffic of.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDesired {
    /// The primary MicroService.
    pub key: ObjKey,
    /// Enforce (write labels) or Observe (report only).
    pub mode: Mode,
    /// `serves.flotilla.rs/<primary>`.
    pub label_key: String,
    /// Desired membership of primary and fallback pods.
    pub members: Vec<Member>,
    /// Whether the engine decides the service: `status.failover` and the conditions are its
    /// report. A service whose request figures alone are reported has neither.
    pub reports_failover: bool,
    /// The `status.failover` to show (when `reports_failover`).
    pub status: FailoverStatus,
    /// The `status.traffic` to show: the request figures last published (see `traffic.rs`).
    pub traffic: Option<TrafficStatus>,
    /// The `FailedOver` and `Flapping` conditions (none for a service probed only for a
    /// rollout analysis).
    pub conditions: Vec<CondSpec>,
    /// Pods serving (or, in Observe mode, that would serve) the traffic.
    pub serving: i64,
}

impl ServiceDesired {
    /// A service whose request figures alone are reported: no members, no failover report.
    pub fn traffic_only(key: ObjKey, label_key: String, traffic: Option<TrafficStatus>) -> Self {
        Self {
            key,
            mode: Mode::Observe,
            label_key,
            members: Vec::new(),
            reports_failover: false,
            status: FailoverStatus::default(),
            traffic,
            conditions: Vec::new(),
            serving: 0,
        }
    }
}

/// The desired state of every service the engine decides or reports the traffic of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// By primary service.
    pub services: BTreeMap<ObjKey, ServiceDesired>,
}

/// A one-off change to announce (Event, counters, detection time).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Traffic moved to the fallback or back.
    Service {
        /// The primary service.
        svc: ObjKey,
        /// Enforce or Observe.
        mode: Mode,
        /// What happened.
        change: Change,
        /// When the decider made the change.
        decided_at: Instant,
    },
    /// A flip was wanted but held because of flapping (announced once per hold).
    Held {
        /// The primary service.
        svc: ObjKey,
        /// The held target.
        target: Target,
    },
    /// A pod's desired membership changed.
    Pod {
        /// The primary service.
        svc: ObjKey,
        /// Enforce or Observe.
        mode: Mode,
        /// The pod.
        pod: ObjKey,
        /// Whether the pod belongs to the fallback.
        fallback: bool,
        /// In or out.
        to: Membership,
        /// For an ejection: start of the decisive failure run.
        detected_from: Option<Instant>,
        /// The last probe result, as evidence.
        evidence: String,
    },
    /// An ejected pod still receives requests (announced once per episode).
    Sticky {
        /// The primary service.
        svc: ObjKey,
        /// The pod.
        pod: ObjKey,
        /// API requests since it was ejected.
        requests: u64,
        /// Whether the service restarts sticky pods (`stickyConnections: Restart`).
        restart: bool,
    },
    /// Delete a sticky pod so its connections break (chosen under the rate limit).
    Restart {
        /// The primary service.
        svc: ObjKey,
        /// The pod.
        pod: ObjKey,
        /// The pod's UID: the eviction applies to this very pod, not a namesake created since.
        uid: String,
        /// API requests since it was ejected.
        requests: u64,
        /// When it was decided; recorded in status before the eviction.
        at: Time,
    },
}

/// Short text for a probe result, as shown in status.
pub fn describe(obs: Option<&Observation>) -> String {
    match obs {
        None => "not probed yet".to_owned(),
        Some(Observation::Success) => "ok".to_owned(),
        Some(Observation::BadStatus(s)) => format!("http {s}"),
        Some(Observation::GrpcNotServing(s)) => format!("grpc {s}"),
        Some(Observation::Timeout) => "timeout".to_owned(),
        Some(Observation::ConnectError) => "connect error".to_owned(),
        Some(Observation::ErrorRate(r)) => format!("error rate {r:.3}"),
    }
}

/// Per-pod evidence for status (no timestamps, so that status only changes with the verdicts).
/// `sticky` is `(still reached, requests while ejected)` for a pod whose traffic is measured
/// while ejected.
pub fn evidence(name: &str, h: &PodHealth, sticky: Option<(bool, u64)>) -> PodEvidence {
    PodEvidence {
        sticky_connections: sticky.map(|(s, _)| s),
        requests_while_ejected: sticky.map(|(_, n)| i64::try_from(n).unwrap_or(i64::MAX)),
        name: name.to_owned(),
        healthy: h.healthy,
        last_probe: Some(describe(h.last.as_ref())),
        last_probe_time: None,
        consecutive_failures: Some(i32::try_from(h.consecutive_failures).unwrap_or(i32::MAX)),
        error_ratio: h.error_ratio.map(|r| (r * 1000.0).round() / 1000.0),
    }
}

/// Wall-clock facts the engine remembers per service for status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// When and why traffic last moved to the fallback.
    pub last_failover: Option<(Time, String)>,
    /// When traffic last returned to the primary.
    pub last_failback: Option<Time>,
    /// When a sticky pod of the service was last restarted.
    pub last_sticky_restart: Option<Time>,
}

/// Builds the status and conditions for one decision.
pub fn status_for(
    d: &Decision,
    mode: Mode,
    fallback: Option<&str>,
    flaps: usize,
    history: &History,
    pods: Vec<PodEvidence>,
) -> (FailoverStatus, Vec<CondSpec>) {
    let observe = mode == Mode::Observe;
    // In Observe mode traffic never moves, so the active target shown is the real one.
    let active = if observe { Target::Primary } else { d.active };
    let status = FailoverStatus {
        active: Some(match active {
            Target::Primary => ActiveTarget::Primary,
            Target::Fallback => ActiveTarget::Fallback,
        }),
        fallback: (active == Target::Fallback)
            .then(|| fallback.map(str::to_owned))
            .flatten(),
        held: (d.held_on_fallback && !observe).then_some(true),
        healthy_pods: Some(i32::try_from(d.healthy_pods).unwrap_or(i32::MAX)),
        total_pods: Some(i32::try_from(d.total_pods).unwrap_or(i32::MAX)),
        panic: Some(d.panic),
        observe_only: Some(observe),
        flaps: Some(i32::try_from(flaps).unwrap_or(i32::MAX)),
        last_failover_time: history.last_failover.as_ref().map(|(t, _)| t.clone()),
        last_failover_reason: history.last_failover.as_ref().map(|(_, r)| r.clone()),
        last_failback_time: history.last_failback.clone(),
        last_sticky_restart_time: history.last_sticky_restart.clone(),
        pods,
    };
    let prefix = if observe { "Observe mode: " } else { "" };
    let failed_over = if let Some(invalid) = &d.invalid {
        CondSpec {
            type_: conditions::FAILED_OVER,
            status: false,
            reason: "InvalidFallback",
            message: invalid.clone(),
        }
    } else {
        let (status, reason) = match (d.active, observe, d.panic) {
            (Target::Fallback, false, _) if d.held_on_fallback => (true, "HeldForMaintenance"),
            (Target::Fallback, false, _) => (true, "FailedOver"),
            (Target::Fallback, true, _) => (false, "WouldFailOver"),
            (Target::Primary, _, true) => (false, "Panic"),
            (Target::Primary, _, false) => (false, "PrimaryServing"),
        };
        CondSpec {
            type_: conditions::FAILED_OVER,
            status,
            reason,
            message: format!("{prefix}{}", d.message),
        }
    };
    let flapping = if d.flapping {
        CondSpec {
            type_: conditions::FLAPPING,
            status: true,
            reason: "FlapLimitReached",
            message: format!(
                "{prefix}{flaps} traffic flips within the flap window; holding {}",
                d.active.as_str()
            ),
        }
    } else {
        CondSpec {
            type_: conditions::FLAPPING,
            status: false,
            reason: "Stable",
            message: format!("{prefix}{flaps} traffic flips within the flap window"),
        }
    };
    (status, vec![failed_over, flapping])
}

/// Whether a change moved traffic (for the counters and the detection histogram).
pub fn change_label(change: &Change) -> &'static str {
    match change {
        Change::FailedOver { .. } => "failover",
        Change::FailedBack { .. } => "failback",
    }
}
