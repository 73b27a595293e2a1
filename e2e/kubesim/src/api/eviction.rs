//! `POST pods/<name>/eviction`: a delete that PodDisruptionBudgets may refuse, in the order
//! and with the answers of the real server's eviction subresource. Pods that cannot disrupt
//! anything (pending, finished or already terminating) are deleted outright; otherwise the one
//! budget selecting the pod decides (two or more is a misconfiguration the server refuses), and
//! only then are the body's `deleteOptions` preconditions checked. An evicted pod gets the
//! `DisruptionTarget` condition, then is deleted as a DELETE with those options would delete it.
//!
//! Budgets are computed from the stored pods on every eviction (see `disruption`), since no
//! disruption controller runs; the budget's status is refreshed with what was computed.

use std::sync::Arc;

use serde_json::{json, Value};

use super::delete::{self, check_preconditions, delete_object, Options};
use super::write::{commit_update, unknown_fields, Managed, WriteCtx};
use super::{now, parse_body, Reply, Request, Shared};
use crate::disruption::{self, Budget, ControllerScale, ALWAYS_ALLOW};
use crate::registry::{ResKey, ResourceDef};
use crate::status::{ApiError, Cause};
use crate::store::State;

const BUDGET_VIOLATED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
const TOO_MANY_BUDGETS: &str =
    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.";

fn pdb_key() -> ResKey {
    ResKey {
        group: "policy".into(),
        plural: "poddisruptionbudgets".into(),
    }
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> Option<&'v str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// The `Status` the server answers a granted eviction with (201, as any create).
fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

/// A 429 with a `DisruptionBudget` cause; `retry_after` is set when the budget is only
/// momentarily unknown.
fn too_many_requests(cause: String, retry_after: Option<u64>) -> ApiError {
    let mut e = ApiError::new(429, "TooManyRequests", BUDGET_VIOLATED);
    e.details.causes = vec![Cause::new("DisruptionBudget", cause, "")];
    e.details.retry_after = retry_after;
    e
}

/// Decodes the body as a `policy/v1` (or `v1beta1`) Eviction: unknown fields warn (or, with
/// `fieldValidation=Strict`, fail) as on any write, and the name must be the URL's.
fn eviction_body(req: &Request, def: &ResourceDef, name: &str) -> Result<Value, ApiError> {
    let body = parse_body(req, def)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is not a JSON object (Eviction expected)",
        ));
    }
    match str_at(&body, "/apiVersion").unwrap_or("") {
        "" | "policy/v1" | "policy/v1beta1" => {}
        av => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version (policy/v1)"
            )))
        }
    }
    match str_at(&body, "/kind").unwrap_or("") {
        "" | "Eviction" => {}
        k => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind (Eviction)"
            )))
        }
    }
    // Both versions decode into the one Eviction type (they have the same fields).
    let mut as_v1 = body.clone();
    as_v1["apiVersion"] = json!("policy/v1");
    as_v1["kind"] = json!("Eviction");
    let typed: k8s_openapi::api::policy::v1::Eviction = serde_json::from_value(as_v1.clone())
        .map_err(|e| {
            ApiError::bad_request(format!(
                "Eviction in version \"v1\" cannot be handled as a Eviction: {e}"
            ))
        })?;
    let decoded = serde_json::to_value(&typed).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut unknown = Vec::new();
    unknown_fields(&as_v1, &decoded, "", &mut unknown);
    let unknown: Vec<String> = unknown
        .into_iter()
        .map(|u| format!("unknown field {u:?}"))
        .collect();
    match req.query.get("fieldValidation") {
        Some("Strict") if !unknown.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                unknown.join(", ")
            )))
        }
        Some("Ignore") => {}
        _ => unknown.into_iter().for_each(|u| req.warnings.push(u)),
    }
    if typed.metadata.name.as_deref() != Some(name) {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    Ok(decoded)
}

/// Pods whose eviction cannot disrupt anything: not running yet (a pod no kubelet has
/// reported on counts as pending), finished, or already terminating.
fn can_ignore_budgets(pod: &Value) -> bool {
    matches!(
        str_at(pod, "/status/phase"),
        None | Some("Pending" | "Succeeded" | "Failed")
    ) || pod.pointer("/metadata/deletionTimestamp").is_some()
}

/// The scale of a pod's controller: a ReplicaSet's Deployment when it has one, else any
/// controller with a `scale` subresource.
fn controller_scale(st: &State, pod: &Value) -> ControllerScale {
    let Some(owner) = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        })
    else {
        return ControllerScale::Unmanaged;
    };
    let ns = str_at(pod, "/metadata/namespace").unwrap_or("");
    let find = |owner: &Value| -> Option<(Arc<ResourceDef>, Arc<Value>)> {
        let def = st.registry.by_kind(
            owner.get("apiVersion").and_then(Value::as_str)?,
            owner.get("kind").and_then(Value::as_str)?,
        )?;
        let obj = st.get(&def.key(), ns, owner.get("name").and_then(Value::as_str)?)?;
        (obj.pointer("/metadata/uid") == owner.get("uid")).then_some((def, obj))
    };
    let Some((mut def, mut obj)) = find(owner) else {
        return ControllerScale::Missing;
    };
    if def.group == "apps" && def.kind == "ReplicaSet" {
        let parent = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter().find(|r| {
                    r.get("controller").and_then(Value::as_bool) == Some(true)
                        && r.get("kind").and_then(Value::as_str) == Some("Deployment")
                })
            })
            .cloned();
        if let Some(parent) = parent {
            match find(&parent) {
                Some(found) => (def, obj) = found,
                None => return ControllerScale::Missing,
            }
        }
    }
    let Some(paths) = &def.scale else {
        return ControllerScale::Missing;
    };
    let pointer: String = paths
        .spec_replicas
        .trim_start_matches('.')
        .split('.')
        .map(|p| format!("/{p}"))
        .collect();
    let replicas = obj.pointer(&pointer).and_then(Value::as_i64).unwrap_or(1);
    let uid = str_at(&obj, "/metadata/uid").unwrap_or("").to_string();
    ControllerScale::Scale(uid, replicas)
}

/// The budget of `pdb` over the pods it selects now.
fn budget_of(st: &State, pods_def: &ResourceDef, pdb: &Value) -> Result<Budget, String> {
    let ns = str_at(pdb, "/metadata/namespace");
    let pods = st.list(&pods_def.key(), ns);
    let selected: Vec<&Value> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| disruption::selects(pdb, p))
        .collect();
    disruption::budget(pdb, &selected, &|p| controller_scale(st, p))
}

/// Writes the budget's status as the disruption controller would, if it changed.
fn refresh_status(st: &mut State, pods_def: &ResourceDef, pdb: &Arc<Value>) {
    let Ok(budget) = budget_of(st, pods_def, pdb) else {
        return;
    };
    let Some(def) = st.registry.get(&pdb_key()) else {
        return;
    };
    let mut updated = (**pdb).clone();
    updated["status"] = disruption::status(pdb, &budget, &now());
    if updated == **pdb {
        return;
    }
    let w = WriteCtx {
        def: &def,
        version: "v1",
        subresource: Some("status"),
        dry_run: false,
        strict: false,
        warn: None,
    };
    // The status is derived; a write that fails validation leaves the old one.
    let _ = commit_update(st, &w, pdb, updated, Managed::Keep);
}

/// How the budget check ended.
enum Decision {
    /// Delete the pod; `unready` when it was let go as an unready pod (a precondition
    /// conflict then reads as a busy budget, as the real server's retry guard does).
    Evict {
        budget: Option<Arc<Value>>,
        unready: bool,
    },
    /// Answer this reply without deleting.
    Refuse(Result<Reply, ApiError>, Option<Arc<Value>>),
}

fn decide(st: &State, def: &ResourceDef, pod: &Value) -> Decision {
    if can_ignore_budgets(pod) {
        return Decision::Evict {
            budget: None,
            unready: false,
        };
    }
    let budgets: Vec<Arc<Value>> = st
        .list(&pdb_key(), str_at(pod, "/metadata/namespace"))
        .into_iter()
        .filter(|b| disruption::selects(b, pod))
        .collect();
    let pdb = match budgets.as_slice() {
        [] => {
            return Decision::Evict {
                budget: None,
                unready: false,
            }
        }
        [one] => one.clone(),
        _ => {
            // The real server returns this Status as the created object: HTTP 201 with a
            // failure inside (client-go turns it into a 500 error; kube-rs returns it as Ok).
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": TOO_MANY_BUDGETS, "code": 500});
            return Decision::Refuse(Ok(Reply::Json(201, status)), None);
        }
    };
    let name = str_at(&pdb, "/metadata/name").unwrap_or("").to_string();
    let budget = match budget_of(st, def, &pdb) {
        Ok(b) => b,
        Err(e) => {
            let cause = format!("The disruption budget {name} cannot be computed: {e}");
            return Decision::Refuse(Err(too_many_requests(cause, Some(10))), Some(pdb));
        }
    };
    if !disruption::is_ready(pod) {
        let always = str_at(&pdb, "/spec/unhealthyPodEvictionPolicy") == Some(ALWAYS_ALLOW);
        let healthy_enough =
            budget.current_healthy >= budget.desired_healthy && budget.desired_healthy > 0;
        if always || healthy_enough {
            return Decision::Evict {
                budget: Some(pdb),
                unready: true,
            };
        }
    }
    if budget.disruptions_allowed == 0 {
        let cause = format!(
            "The disruption budget {name} needs {} healthy pods and has {} currently",
            budget.desired_healthy, budget.current_healthy
        );
        return Decision::Refuse(Err(too_many_requests(cause, None)), Some(pdb));
    }
    Decision::Evict {
        budget: Some(pdb),
        unready: false,
    }
}

/// The preconditions as the eviction's pod update checks them (before any delete).
fn check_latest(name: &str, pod: &Value, opts: &Options) -> Result<(), ApiError> {
    let uid = str_at(pod, "/metadata/uid").unwrap_or("");
    if let Some(want) = opts.uid.as_deref().filter(|u| !u.is_empty() && *u != uid) {
        return Err(ApiError::conflict("", "Pod", name, &format!(
            "the UID in the precondition ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
        )));
    }
    let rv = str_at(pod, "/metadata/resourceVersion").unwrap_or("");
    if let Some(want) = opts.rv.as_deref().filter(|r| !r.is_empty() && *r != rv) {
        return Err(ApiError::conflict("", "Pod", name, &format!(
            "the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({rv}). The object might have been modified"
        )));
    }
    Ok(())
}

/// Marks the pod as a disruption target (through its status, as the real server does) and
/// deletes it with the eviction's options.
fn evict_pod(
    st: &mut State,
    def: &ResourceDef,
    pod: &Arc<Value>,
    opts: &Options,
) -> Result<(), ApiError> {
    let name = str_at(pod, "/metadata/name").unwrap_or("").to_string();
    if opts.dry_run {
        return check_preconditions(def, &name, pod, opts);
    }
    check_latest(&name, pod, opts)?;
    let mut marked = (**pod).clone();
    let condition = json!({"type": "DisruptionTarget", "status": "True", "lastTransitionTime": now(),
        "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"});
    if !marked.get("status").is_some_and(Value::is_object) {
        marked["status"] = json!({});
    }
    let conditions = marked["status"]
        .as_object_mut()
        .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
    match conditions.and_then(Value::as_array_mut) {
        Some(list) => match list
            .iter_mut()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("DisruptionTarget"))
        {
            Some(c) if c.get("status").and_then(Value::as_str) == Some("True") => {
                c["reason"] = condition["reason"].clone();
                c["message"] = condition["message"].clone();
            }
            Some(c) => *c = condition,
            None => list.push(condition),
        },
        None => marked["status"]["conditions"] = json!([condition]),
    }
    let w = WriteCtx {
        def,
        version: "v1",
        subresource: Some("status"),
        dry_run: false,
        strict: false,
        warn: None,
    };
    commit_update(st, &w, pod, marked, Managed::Keep)?;
    let ns = str_at(pod, "/metadata/namespace").unwrap_or("");
    let current = st
        .get(&def.key(), ns, &name)
        .ok_or_else(|| ApiError::not_found("", "pods", &name))?;
    delete_object(st, def, &current, opts.policy, opts.grace);
    delete::collect_garbage(st);
    Ok(())
}

pub fn evict(shared: &Arc<Shared>, def: &ResourceDef, req: &Request) -> Result<Reply, ApiError> {
    let name = req.target.name.clone().unwrap_or_default();
    let body = eviction_body(req, def, &name)?;
    let mut opts = delete::options_from(body.get("deleteOptions").unwrap_or(&Value::Null), None)?;
    opts.dry_run |= req.query.dry_run();
    let mut st = shared.store.lock();
    let pod = st
        .get(&def.key(), req.namespace(), &name)
        .ok_or_else(|| ApiError::not_found("", "pods", &name))?;
    let (budget, unready) = match decide(&st, def, &pod) {
        Decision::Refuse(reply, budget) => {
            if let (Some(b), false) = (budget, opts.dry_run) {
                refresh_status(&mut st, def, &b);
            }
            return reply;
        }
        Decision::Evict { budget, unready } => (budget, unready),
    };
    let result = evict_pod(&mut st, def, &pod, &opts);
    if let (Some(b), false) = (&budget, opts.dry_run) {
        refresh_status(&mut st, def, b);
    }
    match result {
        Ok(()) => Ok(Reply::Json(201, success())),
        Err(e) if e.code == 409 && unready && opts.rv.is_none() => {
            let name = budget
                .as_deref()
                .and_then(|b| str_at(b, "/metadata/name"))
                .unwrap_or("")
                .to_string();
            Err(too_many_requests(
                format!("The disruption budget {name} is still being processed by the server."),
                Some(10),
            ))
        }
        Err(e) => Err(e),
    }
}
