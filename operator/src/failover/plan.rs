//! What the writer must change to make the cluster match a desired state: pod label patches and
//! the status apply body (`status.failover`, the engine's conditions, `status.traffic`). Pure:
//! desired values and observed objects in, writes out; an empty plan means no write.

use flotilla_crds::{labels, FailoverStatus, TrafficStatus, API_VERSION, KIND};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{json, Value};

use super::decide::Membership;
use super::inventory::{Inventory, ObjKey, ServiceInfo};
use super::outputs::{CondSpec, ServiceDesired};

/// One label change on one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelPatch {
    /// The pod.
    pub pod: ObjKey,
    /// `serves.flotilla.rs/<primary>`.
    pub key: String,
    /// The new value; `None` removes the label (fallback pods leaving the primary's traffic).
    pub value: Option<&'static str>,
}

impl LabelPatch {
    /// The JSON merge patch body.
    pub fn body(&self) -> Value {
        json!({ "metadata": { "labels": { self.key.clone(): self.value } } })
    }
}

/// Label patches that make the pods' membership labels match `svc` (Enforce mode only).
pub fn label_patches(svc: &ServiceDesired, inv: &Inventory) -> Vec<LabelPatch> {
    let mut out = Vec::new();
    for m in &svc.members {
        let Some(pod) = inv.pods.get(&m.pod) else {
            continue;
        };
        let current = pod.serves.get(&svc.label_key).map(String::as_str);
        let want = match (m.to, m.fallback) {
            (Membership::In, _) => Some(labels::SERVES_TRUE),
            (Membership::Out, false) => Some(labels::SERVES_FALSE),
            (Membership::Out, true) => None,
        };
        if current != want {
            out.push(LabelPatch {
                pod: m.pod.clone(),
                key: svc.label_key.clone(),
                value: want,
            });
        }
    }
    out
}

/// How urgent a status write is.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusPlan {
    /// Status already matches.
    Unchanged,
    /// Verdicts, target, conditions or the request figures changed: write now. (The engine
    /// publishes new figures at most once per interval, see `traffic.rs`.)
    Now(Value),
    /// Only evidence (failure counts, error ratios) changed: write when the throttle allows.
    Evidence(Value),
}

fn strip_evidence(s: &FailoverStatus) -> FailoverStatus {
    let mut s = s.clone();
    for p in &mut s.pods {
        p.consecutive_failures = None;
        p.error_ratio = None;
        p.last_probe = None;
        p.requests_while_ejected = None;
    }
    s
}

fn condition(
    spec: &CondSpec,
    current: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let message = spec.message.clone();
    flotilla_crds::condition(
        current,
        spec.type_,
        spec.status,
        spec.reason,
        message,
        generation,
        now,
    )
}

fn same_condition(a: &Condition, current: &[Condition]) -> bool {
    current.iter().any(|c| {
        c.type_ == a.type_
            && c.status == a.status
            && c.reason == a.reason
            && c.message == a.message
            && c.observed_generation == a.observed_generation
    })
}

/// A server-side-apply body for the status of the MicroService `key`.
pub fn status_body(key: &ObjKey, status: Value) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": { "name": key.name, "namespace": key.ns },
        "status": status,
    })
}

/// The server-side-apply body that withdraws the engine's report: no `status` at all, so the
/// failover field manager owns nothing afterwards. An applied `status: {}` would claim the
/// whole status as one empty value, and the engine's next report (which no longer carries that
/// empty value) would then remove the status as a whole, the reconciler's part included.
pub fn withdrawal_body(key: &ObjKey) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": { "name": key.name, "namespace": key.ns },
    })
}

/// The server-side-apply body for `status.failover`, the engine's two conditions and
/// `status.traffic`, and whether it must be written now. A service whose request figures alone
/// are reported gets neither `failover` nor conditions, so applying the body withdraws any it
/// had; with no figures either, the body is the withdrawal body.
pub fn status_plan(svc: &ServiceDesired, info: &ServiceInfo, now: &Time) -> StatusPlan {
    let conds: Vec<Condition> = svc
        .conditions
        .iter()
        .map(|c| condition(c, &info.conditions, info.generation, now))
        .collect();
    let conds_same = conds.iter().all(|c| same_condition(c, &info.conditions));
    // A withdrawn report may leave an empty object behind: that is no report.
    let current = info
        .status
        .clone()
        .filter(|f| *f != FailoverStatus::default());
    let current_traffic = info
        .traffic
        .as_ref()
        .filter(|t| **t != TrafficStatus::default());
    let wanted = svc.reports_failover.then_some(&svc.status);
    // No `conditions` key when there are none (a service probed only for a rollout analysis):
    // an applied empty list would claim the whole list, and withdrawing that claim later would
    // take the reconciler's conditions with it.
    let mut status = serde_json::Map::new();
    if let Some(f) = wanted {
        status.insert("failover".into(), json!(f));
    }
    if !conds.is_empty() {
        status.insert("conditions".into(), json!(conds));
    }
    if let Some(t) = &svc.traffic {
        status.insert("traffic".into(), json!(t));
    }
    let body = if status.is_empty() {
        withdrawal_body(&svc.key)
    } else {
        status_body(&svc.key, Value::Object(status))
    };
    let stripped = |f: Option<&FailoverStatus>| f.map(strip_evidence);
    if !conds_same
        || stripped(current.as_ref()) != stripped(wanted)
        || current_traffic != svc.traffic.as_ref()
    {
        StatusPlan::Now(body)
    } else if current.as_ref() != wanted {
        StatusPlan::Evidence(body)
    } else {
        StatusPlan::Unchanged
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
