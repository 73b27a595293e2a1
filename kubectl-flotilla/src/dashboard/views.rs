//! The dashboard's JSON about MicroServices and pods, as pure functions of the objects the watches
//! hold: one row per MicroService for the fleet ([`service_row`]) and one service with its pods,
//! their traffic membership and the failover engine's verdict on each ([`service_view`]). No
//! client and no clock here: the server hands in what its watches hold, tests hand in values.

use std::collections::BTreeMap;

use flotilla_crds::{conditions, labels, MicroService, PodHealth, TrafficStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde::Serialize;

/// One MicroService as the fleet table shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    /// `ready/desired`, as the READY column of `kubectl get msvc` shows it.
    pub ready: Option<String>,
    /// The `Ready` condition.
    pub ready_condition: Option<ConditionView>,
    /// The `Degraded` condition, only while it is true.
    pub degraded: Option<ConditionView>,
    /// Where the traffic goes; absent while the pods are not probed.
    pub traffic: Option<TrafficView>,
    /// The last template change's rollout; absent before the first one.
    pub rollout: Option<RolloutView>,
    /// What clients see: requests per second, error ratio and p99 latency (`status.traffic`),
    /// for services whose traffic the operator reports.
    pub requests: Option<TrafficStatus>,
    /// False while the operator has not yet observed the latest spec.
    pub spec_observed: bool,
}

/// A status condition, as the page shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// `status.failover`, as the page shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficView {
    /// `primary` or `fallback`; absent when failover is off and the pods are probed only for a
    /// rollout's analysis.
    pub active: Option<&'static str>,
    /// The fallback MicroService receiving the traffic while `active` is `fallback`.
    pub fallback: Option<String>,
    /// The traffic is held on the fallback for maintenance.
    pub held: bool,
    pub healthy_pods: Option<i32>,
    pub total_pods: Option<i32>,
    /// Every pod judged unhealthy and no healthy fallback: Kubernetes readiness decides.
    pub panic: bool,
    /// Decisions are reported, not applied.
    pub observe_only: bool,
    pub last_failover_time: Option<jiff::Timestamp>,
    pub last_failover_reason: Option<String>,
    pub last_failback_time: Option<jiff::Timestamp>,
}

/// `status.rollout`, as the page shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    pub phase: &'static str,
    pub stable_revision: Option<String>,
    pub canary_revision: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// One service and the pods that carry or could carry its traffic.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub service: ServiceRow,
    /// Its own pods (stable, then canary), then the fallback's pods that carry its traffic.
    pub pods: Vec<PodView>,
}

/// Which side of a service a pod is on.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum Track {
    Stable,
    Canary,
    /// A pod of another MicroService (the fallback) labelled to carry this service's traffic.
    Fallback,
}

/// One pod: what Kubernetes says, whether it is in the service's traffic, and the failover
/// engine's verdict with its evidence.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub name: String,
    /// The MicroService the pod belongs to.
    pub owner: String,
    pub track: Track,
    /// The pod's phase, or `Terminating` while it is being deleted.
    pub phase: String,
    /// Kubernetes' `Ready` condition.
    pub ready: bool,
    pub restarts: i32,
    pub ip: Option<String>,
    /// The membership label `serves.flotilla.rs/<service>`: in traffic (`true`), taken out
    /// (`false`), or not labelled.
    pub serves: Option<bool>,
    /// The failover engine's verdict (`status.failover.pods` of the owner); absent when the pod
    /// is not probed.
    pub verdict: Option<PodHealth>,
}

/// The fleet table's row for `m`.
pub fn service_row(m: &MicroService) -> ServiceRow {
    let st = m.status.as_ref();
    let condition = |type_: &str| {
        st.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .map(|c| ConditionView {
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
    };
    let traffic = st.and_then(|s| s.failover.as_ref()).map(|f| TrafficView {
        active: f.active.map(|a| a.as_str()),
        fallback: f.fallback.clone(),
        held: f.held == Some(true),
        healthy_pods: f.healthy_pods,
        total_pods: f.total_pods,
        panic: f.panic == Some(true),
        observe_only: f.observe_only == Some(true),
        last_failover_time: f.last_failover_time.as_ref().map(|t| t.0),
        last_failover_reason: f.last_failover_reason.clone(),
        last_failback_time: f.last_failback_time.as_ref().map(|t| t.0),
    });
    let rollout = st.and_then(|s| s.rollout.as_ref()).map(|r| RolloutView {
        phase: r.phase.as_str(),
        stable_revision: r.stable_revision.clone(),
        canary_revision: r.canary_revision.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
    });
    ServiceRow {
        namespace: m.namespace().unwrap_or_default(),
        name: m.name_any(),
        ready: st.and_then(|s| s.ready.clone()),
        ready_condition: condition(conditions::READY),
        degraded: condition(conditions::DEGRADED).filter(|c| c.status == conditions::TRUE),
        traffic,
        rollout,
        requests: st.and_then(|s| s.traffic.clone()),
        spec_observed: st.and_then(|s| s.observed_generation) == m.metadata.generation,
    }
}

/// The fleet: a row per MicroService, by namespace and name.
pub fn fleet(msvcs: &[MicroService]) -> Vec<ServiceRow> {
    let mut rows: Vec<ServiceRow> = msvcs.iter().map(service_row).collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// `m` with its pods: those its selector matches, then the pods of other MicroServices labelled
/// to carry its traffic (the fallback's, during a failover). `fleet` supplies the verdicts on the
/// fallback's pods; `pods` may hold any pods of the namespace.
pub fn service_view(m: &MicroService, fleet: &[MicroService], pods: &[Pod]) -> ServiceView {
    let name = m.name_any();
    let namespace = m.namespace().unwrap_or_default();
    let selector = m
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_else(|| format!("{}={name},{}={name}", labels::NAME, labels::INSTANCE));
    let serves = labels::serves(&name);
    let verdicts: BTreeMap<&str, BTreeMap<&str, &PodHealth>> = fleet
        .iter()
        .filter(|o| o.namespace().unwrap_or_default() == namespace)
        .filter_map(|o| {
            let f = o.status.as_ref()?.failover.as_ref()?;
            let by_pod = f.pods.iter().map(|p| (p.name.as_str(), p)).collect();
            Some((o.metadata.name.as_deref()?, by_pod))
        })
        .collect();
    let mut views: Vec<PodView> = pods
        .iter()
        .filter(|p| p.namespace().unwrap_or_default() == namespace)
        .filter_map(|p| {
            let own = selector_matches(&selector, p.labels());
            let carries = p.labels().get(&serves).map(String::as_str) == Some(labels::SERVES_TRUE);
            let track = match (own, carries) {
                (true, _) if is_canary(p) => Track::Canary,
                (true, _) => Track::Stable,
                (false, true) => Track::Fallback,
                (false, false) => return None,
            };
            let owner = if own {
                name.clone()
            } else {
                p.labels()
                    .get(labels::INSTANCE)
                    .cloned()
                    .unwrap_or_default()
            };
            let verdict = verdicts
                .get(owner.as_str())
                .and_then(|v| v.get(p.name_any().as_str()))
                .map(|v| (*v).clone());
            Some(pod_view(p, owner, track, &serves, verdict))
        })
        .collect();
    views.sort_by(|a, b| (a.track, &a.name).cmp(&(b.track, &b.name)));
    ServiceView {
        service: service_row(m),
        pods: views,
    }
}

fn pod_view(
    p: &Pod,
    owner: String,
    track: Track,
    serves: &str,
    verdict: Option<PodHealth>,
) -> PodView {
    let status = p.status.as_ref();
    PodView {
        name: p.name_any(),
        owner,
        track,
        // As kubectl shows it: a pod being deleted is `Terminating`, whatever its phase.
        phase: match (
            &p.metadata.deletion_timestamp,
            status.and_then(|s| s.phase.clone()),
        ) {
            (Some(_), _) => "Terminating".into(),
            (None, phase) => phase.unwrap_or_else(|| "Pending".into()),
        },
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == conditions::TRUE),
        restarts: status
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0),
        ip: status.and_then(|s| s.pod_ip.clone()),
        serves: match p.labels().get(serves).map(String::as_str) {
            Some(labels::SERVES_TRUE) => Some(true),
            Some(labels::SERVES_FALSE) => Some(false),
            _ => None,
        },
        verdict,
    }
}

fn is_canary(p: &Pod) -> bool {
    p.labels().get(labels::TRACK).map(String::as_str) == Some(labels::TRACK_CANARY)
}

/// Whether `labels` satisfy `selector`, a comma-separated list of `key=value` terms (the form
/// the operator writes to `status.selector`). A term of any other form matches nothing, so an
/// unexpected selector shows no pods rather than the wrong ones.
pub fn selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    let terms: Vec<&str> = selector.split(',').map(str::trim).collect();
    !terms.is_empty()
        && terms.iter().all(|term| {
            let (key, value) = match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) if !k.is_empty() && !k.ends_with('!') => (k.trim(), v.trim()),
                _ => return false,
            };
            labels.get(key).map(String::as_str) == Some(value)
        })
}

#[cfg(test)]
#[path = "views_tests.rs"]
mod tests;
