//! PodDisruptionBudget arithmetic as kube-controller-manager's disruption controller does it:
//! which pods a budget selects, how many of them are healthy, how many must stay healthy, and
//! how many disruptions that leaves. kubesim runs no disruption controller; the eviction
//! subresource computes a budget from the stored pods whenever it needs one.
//!
//! Pure functions over stored JSON. No store access: the caller passes the pods and a lookup
//! of each pod's controller scale.

use serde_json::{json, Value};

use crate::selectors::LabelSelector;

/// `unhealthyPodEvictionPolicy: AlwaysAllow`: an unready pod may always be evicted.
pub const ALWAYS_ALLOW: &str = "AlwaysAllow";

/// What a budget allows right now: the numbers of a PodDisruptionBudget's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Pods the budget expects: the scale of the selected pods' controllers, or the number of
    /// selected pods for an integer `minAvailable`.
    pub expected_pods: i64,
    /// Pods that must stay healthy.
    pub desired_healthy: i64,
    /// Selected pods that are Ready and not terminating.
    pub current_healthy: i64,
    /// How many healthy pods may be disrupted now (never negative; zero while the budget
    /// expects no pods, so a budget whose pods have not appeared yet is safe).
    pub disruptions_allowed: i64,
}

/// A pod's controller, as far as the budget's denominator is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerScale {
    /// The pod has no controller: it counts for an integer `minAvailable` only.
    Unmanaged,
    /// The controller (its uid) and its desired replicas.
    Scale(String, i64),
    /// The pod names a controller that does not exist or has no scale.
    Missing,
}

/// Whether a budget selects a pod: same namespace and the selector matches its labels. A
/// budget without a selector selects nothing; an empty selector selects every pod (policy/v1).
pub fn selects(pdb: &Value, pod: &Value) -> bool {
    let ns = |o: &Value| {
        o.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if ns(pdb) != ns(pod) {
        return false;
    }
    match pdb.pointer("/spec/selector") {
        Some(sel) if sel.is_object() => LabelSelector::from_object(sel).matches(pod),
        _ => false,
    }
}

/// The pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// Counted as healthy by a budget: Ready and not being deleted.
pub fn is_healthy(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none() && is_ready(pod)
}

/// `intstr.GetScaledValueFromIntOrPercent` with rounding up: an integer as is, `"N%"` of
/// `total` rounded up.
fn scaled(v: &Value, total: i64) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("invalid value {n}")),
        Value::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            Ok((pct * total + 99).div_euclid(100))
        }
        other => Err(format!("invalid value {other}")),
    }
}

/// The sum of the scales of the selected pods' controllers (each counted once).
fn expected_scale(
    pods: &[&Value],
    scale_of: &dyn Fn(&Value) -> ControllerScale,
) -> Result<i64, String> {
    let mut seen: Vec<(String, i64)> = Vec::new();
    for pod in pods {
        match scale_of(pod) {
            ControllerScale::Unmanaged => {}
            ControllerScale::Scale(uid, n) => {
                if !seen.iter().any(|(u, _)| *u == uid) {
                    seen.push((uid, n));
                }
            }
            ControllerScale::Missing => {
                let name = pod
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                return Err(format!("found no controllers for pod {name:?}"));
            }
        }
    }
    Ok(seen.iter().map(|(_, n)| n).sum())
}

/// The budget of `pdb` over `pods` (the pods it selects). An error is what the disruption
/// controller would fail to sync on (a controller it cannot find, a bad percentage); it then
/// allows no disruption.
pub fn budget(
    pdb: &Value,
    pods: &[&Value],
    scale_of: &dyn Fn(&Value) -> ControllerScale,
) -> Result<Budget, String> {
    let spec = pdb.get("spec").cloned().unwrap_or(Value::Null);
    let (expected, desired) = match (spec.get("maxUnavailable"), spec.get("minAvailable")) {
        (Some(max), _) => {
            let expected = expected_scale(pods, scale_of)?;
            (expected, (expected - scaled(max, expected)?).max(0))
        }
        (None, Some(min @ Value::String(_))) => {
            let expected = expected_scale(pods, scale_of)?;
            (expected, scaled(min, expected)?)
        }
        (None, Some(min)) => (pods.len() as i64, scaled(min, 0)?),
        (None, None) => (0, 0),
    };
    let healthy = pods.iter().filter(|p| is_healthy(p)).count() as i64;
    let allowed = if expected <= 0 {
        0
    } else {
        (healthy - desired).max(0)
    };
    Ok(Budget {
        expected_pods: expected,
        desired_healthy: desired,
        current_healthy: healthy,
        disruptions_allowed: allowed,
    })
}

/// The status the disruption controller writes for `budget` (keeping the
/// `DisruptionAllowed` condition's transition time while its status does not change).
pub fn status(pdb: &Value, budget: &Budget, now: &str) -> Value {
    let generation = pdb
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let (cond_status, reason) = if budget.disruptions_allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let old = pdb
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("DisruptionAllowed"))
        });
    let since = old
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(cond_status))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    json!({
        "currentHealthy": budget.current_healthy,
        "desiredHealthy": budget.desired_healthy,
        "disruptionsAllowed": budget.disruptions_allowed,
        "expectedPods": budget.expected_pods,
        "observedGeneration": generation,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": cond_status,
            "reason": reason,
            "message": "",
            "observedGeneration": generation,
            "lastTransitionTime": since,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, owner: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"},
                         "ownerReferences": [{"uid": owner, "controller": true}]},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    fn pdb(spec: Value) -> Value {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        json!({"metadata": {"name": "b", "namespace": "ns", "generation": 1}, "spec": spec})
    }

    /// Every pod belongs to a controller "rs" of scale 4.
    fn four(_: &Value) -> ControllerScale {
        ControllerScale::Scale("rs".into(), 4)
    }

    fn of(pdb_: &Value, pods: &[Value]) -> Budget {
        let refs: Vec<&Value> = pods.iter().collect();
        budget(pdb_, &refs, &four).expect("a budget")
    }

    #[test]
    fn integer_min_available_counts_selected_pods() {
        // An integer minAvailable compares healthy pods with it; expected is the pod count.
        let pods = vec![
            pod("a", true, "rs"),
            pod("b", true, "rs"),
            pod("c", false, "rs"),
        ];
        let b = of(&pdb(json!({"minAvailable": 2})), &pods);
        assert_eq!(
            b,
            Budget {
                expected_pods: 3,
                desired_healthy: 2,
                current_healthy: 2,
                disruptions_allowed: 0
            }
        );
    }

    #[test]
    fn percentages_round_up_against_the_controller_scale() {
        // 50% of a scale of 4 is 2; maxUnavailable 30% of 4 rounds up to 2 (desired 2).
        let pods = vec![
            pod("a", true, "rs"),
            pod("b", true, "rs"),
            pod("c", true, "rs"),
        ];
        let b = of(&pdb(json!({"minAvailable": "50%"})), &pods);
        assert_eq!((b.expected_pods, b.desired_healthy), (4, 2));
        assert_eq!(b.disruptions_allowed, 1);
        let b = of(&pdb(json!({"maxUnavailable": "30%"})), &pods);
        assert_eq!((b.desired_healthy, b.disruptions_allowed), (2, 1));
    }

    #[test]
    fn terminating_pods_are_not_healthy() {
        // A pod with a deletionTimestamp no longer counts, even while still Ready.
        let mut gone = pod("a", true, "rs");
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let b = of(
            &pdb(json!({"maxUnavailable": 1})),
            &[gone, pod("b", true, "rs")],
        );
        assert_eq!(b.current_healthy, 1);
        assert_eq!(b.disruptions_allowed, 0);
    }

    #[test]
    fn unmanaged_pods_leave_a_scaled_budget_expecting_nothing() {
        // Pods without a controller do not count towards the scale, so nothing may be disrupted.
        let bare = json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"app": "web"}},
                          "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let b = budget(&pdb(json!({"maxUnavailable": 1})), &[&bare], &|_| {
            ControllerScale::Unmanaged
        })
        .expect("a budget");
        assert_eq!((b.expected_pods, b.disruptions_allowed), (0, 0));
        let missing = budget(&pdb(json!({"maxUnavailable": 1})), &[&bare], &|_| {
            ControllerScale::Missing
        });
        assert!(missing.is_err());
    }

    #[test]
    fn selector_scope() {
        // No selector selects nothing; an empty one selects the whole namespace only.
        let p = pod("a", true, "rs");
        let none = json!({"metadata": {"namespace": "ns"}, "spec": {}});
        let all = json!({"metadata": {"namespace": "ns"}, "spec": {"selector": {}}});
        let other_ns = json!({"metadata": {"namespace": "x"}, "spec": {"selector": {}}});
        assert!(!selects(&none, &p));
        assert!(selects(&all, &p));
        assert!(!selects(&other_ns, &p));
    }

    #[test]
    fn status_keeps_the_transition_time_while_the_condition_holds() {
        // Recomputing an unchanged budget writes an identical status (so no write happens).
        let mut p = pdb(json!({"minAvailable": 1}));
        let b = of(&p, &[pod("a", true, "rs"), pod("b", true, "rs")]);
        p["status"] = status(&p, &b, "2026-01-01T00:00:00Z");
        assert_eq!(status(&p, &b, "2026-02-02T00:00:00Z"), p["status"]);
        assert_eq!(p["status"]["conditions"][0]["reason"], "SufficientPods");
    }
}
