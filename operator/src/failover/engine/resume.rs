//! Where a restarted (or newly leading) engine picks up: the target and memberships a service
//! already has, read from its status and its pods' labels, so a restart announces nothing and
//! keeps the current target. Pure: inventory in, decider state out.

use std::time::Instant;

use flotilla_crds::{labels, ActiveTarget};

use super::super::decide::{Membership, ServiceState, Target};
use super::super::inventory::{Inventory, ObjKey, ServiceInfo};
use super::super::outputs::History;
use super::super::policy::Mode;

/// The engine's memory of one service.
pub(super) struct SvcEntry {
    pub(super) state: ServiceState,
    pub(super) history: History,
    pub(super) held_announced: bool,
    /// When a sticky pod of this service was last restarted (the rate limit).
    pub(super) last_restart: Option<Instant>,
    /// When a first failure last pulled the service's other probes forward (the rate limit).
    pub(super) last_suspicion: Option<Instant>,
}

/// Decider state for a service seen for the first time: the target and membership it already
/// has (from status and labels), so a restart keeps the current target and announces nothing.
pub(super) fn resume(svc: &ServiceInfo, inv: &Inventory) -> SvcEntry {
    let active = match svc.status.as_ref().and_then(|s| s.active) {
        Some(ActiveTarget::Fallback) if svc.failover.mode == Mode::Enforce => Target::Fallback,
        _ => Target::Primary,
    };
    let key = labels::serves(&svc.key.name);
    let membership = |value: Option<&String>, default: Membership| match value.map(String::as_str) {
        Some(labels::SERVES_TRUE) => Membership::In,
        Some(_) => Membership::Out,
        None => default,
    };
    let primary = inv
        .pods_of(&svc.key)
        .map(|p| {
            (
                p.key.name.clone(),
                membership(p.serves.get(&key), Membership::In),
            )
        })
        .collect();
    let fallback = svc
        .failover
        .fallback
        .as_ref()
        .map(|f| ObjKey::new(svc.key.ns.clone(), f.clone()))
        .map(|fk| {
            inv.pods_of(&fk)
                .map(|p| {
                    (
                        p.key.name.clone(),
                        membership(p.serves.get(&key), Membership::Out),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let history = History {
        last_failover: svc.status.as_ref().and_then(|s| {
            Some((
                s.last_failover_time.clone()?,
                s.last_failover_reason.clone().unwrap_or_default(),
            ))
        }),
        last_failback: svc
            .status
            .as_ref()
            .and_then(|s| s.last_failback_time.clone()),
        last_sticky_restart: svc
            .status
            .as_ref()
            .and_then(|s| s.last_sticky_restart_time.clone()),
    };
    let mut state = ServiceState::resume_with(active, primary, fallback);
    // A service whose status never showed a healthy pod is treated as still starting.
    state.ever_ok = active == Target::Fallback
        || svc
            .status
            .as_ref()
            .and_then(|s| s.healthy_pods)
            .is_some_and(|n| n > 0);
    SvcEntry {
        state,
        history,
        held_announced: false,
        last_restart: None,
        last_suspicion: None,
    }
}
