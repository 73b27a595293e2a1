//! delete and deletecollection: finalizers, graceful pod deletion, and the garbage
//! collector (ownerReferences with background, foreground and orphan propagation, and
//! namespace cleanup). The collector runs synchronously under the store lock after each
//! deletion, so dependents are gone by the time the next request is served.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{json, Value};

use super::read::{present, Selectors};
use super::write::namespaces_key;
use super::{now, Reply, Request, Shared};
use crate::crd;
use crate::registry::{ResKey, ResourceDef};
use crate::request::Query;
use crate::status::ApiError;
use crate::store::{EventType, State};

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Policy {
    Background,
    Foreground,
    Orphan,
}

/// The `DeleteOptions` of a delete (or of an eviction, which carries them in its body).
pub(super) struct Options {
    pub policy: Policy,
    pub grace: Option<i64>,
    pub uid: Option<String>,
    pub rv: Option<String>,
    pub dry_run: bool,
}

fn options(req: &Request) -> Result<Options, ApiError> {
    let body: Value = if req.body.is_empty() {
        json!({})
    } else if req.body.starts_with(b"k8s\x00") {
        crate::proto::decode(&req.body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    options_from(&body, Some(&req.query))
}

/// Reads `DeleteOptions` from a body, falling back to the query parameters a DELETE may
/// carry instead (an eviction passes `None`: its query holds create options).
pub(super) fn options_from(body: &Value, query: Option<&Query>) -> Result<Options, ApiError> {
    let q = |k: &str| query.and_then(|q| q.get(k));
    let policy_s = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| q("propagationPolicy").map(String::from));
    let orphan = body
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| q("orphanDependents").map(|v| v == "true"));
    let policy = match (policy_s.as_deref(), orphan) {
        (Some("Foreground"), _) => Policy::Foreground,
        (Some("Orphan"), _) | (None, Some(true)) => Policy::Orphan,
        (Some("Background"), _) | (None, _) => Policy::Background,
        (Some(other), _) => {
            return Err(ApiError::bad_request(format!(
                "unsupported propagationPolicy {other:?}"
            )))
        }
    };
    let grace = body
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| q("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let dry_run = query.is_some_and(Query::dry_run)
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    Ok(Options {
        policy,
        grace,
        uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        rv: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
        dry_run,
    })
}

pub fn delete(shared: &Arc<Shared>, def: &ResourceDef, req: &Request) -> Result<Reply, ApiError> {
    let opts = options(req)?;
    let name = req.target.name.as_deref().unwrap_or("");
    let mut st = shared.store.lock();
    let obj = st
        .get(&def.key(), req.namespace(), name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    check_preconditions(def, name, &obj, &opts)?;
    if opts.dry_run {
        return Ok(Reply::Json(200, present(def, &req.target.version, &obj)));
    }
    let out = delete_object(&mut st, def, &obj, opts.policy, opts.grace);
    collect_garbage(&mut st);
    Ok(Reply::Json(200, present(def, &req.target.version, &out)))
}

/// The uid and resourceVersion preconditions of a delete, worded as the real server's store
/// words them.
pub(super) fn check_preconditions(
    def: &ResourceDef,
    name: &str,
    obj: &Value,
    opts: &Options,
) -> Result<(), ApiError> {
    let m = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .map(String::from)
    };
    if let Some(uid) = &opts.uid {
        if Some(uid) != m("uid").as_ref() {
            return Err(ApiError::conflict(
                &def.group,
                &def.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    m("uid").unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(rv) = &opts.rv {
        if Some(rv) != m("resourceVersion").as_ref() {
            return Err(ApiError::conflict(&def.group, &def.plural, name, &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                m("resourceVersion").unwrap_or_default()
            )));
        }
    }
    Ok(())
}

pub fn delete_collection(
    shared: &Arc<Shared>,
    def: &ResourceDef,
    req: &Request,
) -> Result<Reply, ApiError> {
    let opts = options(req)?;
    let sel = Selectors::from(req)?;
    let mut st = shared.store.lock();
    let targets: Vec<Arc<Value>> = st
        .list(&def.key(), req.target.namespace.as_deref())
        .into_iter()
        .filter(|o| sel.matches(o))
        .collect();
    let mut items = Vec::new();
    for obj in targets {
        let out = if opts.dry_run {
            obj
        } else {
            delete_object(&mut st, def, &obj, opts.policy, opts.grace)
        };
        items.push(present(def, &req.target.version, &out));
    }
    if !opts.dry_run {
        collect_garbage(&mut st);
    }
    let rv = st.current_rv().to_string();
    Ok(Reply::Json(
        200,
        json!({
            "kind": def.list_kind(),
            "apiVersion": def.api_version(&req.target.version),
            "metadata": {"resourceVersion": rv},
            "items": items,
        }),
    ))
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn ns_name(obj: &Value) -> (String, String) {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

/// Deletes one object: removes it at once, or marks it with `deletionTimestamp` when
/// finalizers (or a graceful pod shutdown) must run first. Returns the object as answered.
pub(super) fn delete_object(
    st: &mut State,
    def: &ResourceDef,
    obj: &Arc<Value>,
    policy: Policy,
    grace: Option<i64>,
) -> Arc<Value> {
    let (ns, name) = ns_name(obj);
    let key = def.key();
    let mut fins = finalizers(obj);
    let already = obj.pointer("/metadata/deletionTimestamp").is_some();
    match policy {
        Policy::Foreground if !fins.iter().any(|f| f == FOREGROUND) => fins.push(FOREGROUND.into()),
        Policy::Orphan if !fins.iter().any(|f| f == ORPHAN) => fins.push(ORPHAN.into()),
        _ => {}
    }
    // Pods bound to a node shut down gracefully: the kubelet finishes the deletion.
    let bound_pod = def.group.is_empty()
        && def.plural == "pods"
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
    let pod_grace = if bound_pod {
        grace
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
    } else {
        0
    };
    let is_namespace = def.group.is_empty() && def.plural == "namespaces";
    if fins.is_empty() && pod_grace == 0 && !is_namespace {
        let removed = st.remove(&key, &ns, &name);
        if crd::is_crd(def) {
            crd::unregister(st, obj);
        }
        return removed.unwrap_or_else(|| obj.clone());
    }
    let mut marked = (**obj).clone();
    if !already {
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(pod_grace);
    } else if bound_pod && grace == Some(0) {
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    }
    if bound_pod && grace == Some(0) && fins.is_empty() {
        // The kubelet confirms the shutdown with a zero grace period.
        let removed = st.remove(&key, &ns, &name);
        return removed.unwrap_or_else(|| obj.clone());
    }
    marked["metadata"]["finalizers"] = json!(fins);
    if is_namespace {
        marked["status"] = json!({"phase": "Terminating"});
    }
    if marked == **obj {
        return obj.clone();
    }
    st.put(&key, &ns, &name, marked, EventType::Modified)
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether any owner `obj` names still exists with the uid it names. An owner is looked up by its
/// apiVersion, kind and name (in `obj`'s namespace when the owner's kind is namespaced), as the
/// garbage collector verifies a dangling reference; an unknown kind counts as present, so only
/// a provably missing owner makes a dependent garbage.
fn has_live_owner(st: &State, obj: &Value) -> bool {
    let Some(refs) = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    else {
        return true;
    };
    let (ns, _) = ns_name(obj);
    refs.iter().any(|r| {
        let field = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
        let Some(def) = st.registry.by_kind(field("apiVersion"), field("kind")) else {
            return true;
        };
        let owner_ns = if def.namespaced { ns.as_str() } else { "" };
        st.get(&def.key(), owner_ns, field("name"))
            .is_some_and(|o| uid(&o) == field("uid"))
    })
}

/// The garbage collector's answer to a dependent created after its owners are gone: it is
/// deleted (in the background) at once, as the real collector deletes one whose owners it
/// cannot find.
pub(super) fn collect_orphan(st: &mut State, def: &ResourceDef, obj: &Arc<Value>) {
    if !has_live_owner(st, obj) {
        delete_object(st, def, obj, Policy::Background, None);
        collect_garbage(st);
    }
}

fn uid(obj: &Value) -> String {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Runs the garbage collector and the namespace controller to a fixed point.
pub fn collect_garbage(st: &mut State) {
    for _ in 0..1000 {
        if !gc_pass(st) {
            return;
        }
    }
}

fn set_finalizers(st: &mut State, res: &ResKey, obj: &Arc<Value>, fins: Vec<String>) {
    let (ns, name) = ns_name(obj);
    let mut v = (**obj).clone();
    v["metadata"]["finalizers"] = json!(fins);
    if fins.is_empty() && v.pointer("/metadata/deletionTimestamp").is_some() {
        st.remove(res, &ns, &name);
        if let Some(def) = st.registry.get(res) {
            if crd::is_crd(&def) {
                crd::unregister(st, obj);
            }
        }
    } else {
        st.put(res, &ns, &name, v, EventType::Modified);
    }
}

/// One pass; returns whether anything changed.
fn gc_pass(st: &mut State) -> bool {
    let all = st.all_objects();
    let uids: HashSet<String> = all.iter().map(|(_, o)| uid(o)).collect();
    let mut changed = false;
    for (res, obj) in &all {
        // Skip objects already removed or replaced earlier in this pass.
        let (ns, name) = ns_name(obj);
        let Some(cur) = st.get(res, &ns, &name) else {
            continue;
        };
        if !Arc::ptr_eq(&cur, obj) {
            continue;
        }
        let Some(def) = st.registry.get(res) else {
            continue;
        };
        let my_uid = uid(obj);
        let dependents = || -> Vec<(ResKey, Arc<Value>)> {
            all.iter()
                .filter(|(_, o)| owner_uids(o).contains(&my_uid))
                .cloned()
                .collect()
        };
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            let mut fins = finalizers(obj);
            if fins.iter().any(|f| f == ORPHAN) {
                for (dres, dep) in dependents() {
                    let (dns, dname) = ns_name(&dep);
                    if let Some(cur) = st.get(&dres, &dns, &dname) {
                        let mut d = (*cur).clone();
                        if let Some(refs) = d
                            .pointer_mut("/metadata/ownerReferences")
                            .and_then(Value::as_array_mut)
                        {
                            refs.retain(|r| {
                                r.get("uid").and_then(Value::as_str) != Some(my_uid.as_str())
                            });
                        }
                        st.put(&dres, &dns, &dname, d, EventType::Modified);
                    }
                }
                fins.retain(|f| f != ORPHAN);
                set_finalizers(st, res, obj, fins);
                changed = true;
                continue;
            }
            if fins.iter().any(|f| f == FOREGROUND) {
                let deps = dependents();
                for (dres, dep) in &deps {
                    if dep.pointer("/metadata/deletionTimestamp").is_none() {
                        if let Some(ddef) = st.registry.get(dres) {
                            delete_object(st, &ddef, dep, Policy::Background, None);
                            changed = true;
                        }
                    }
                }
                if deps.is_empty() {
                    fins.retain(|f| f != FOREGROUND);
                    set_finalizers(st, res, obj, fins);
                    changed = true;
                }
                continue;
            }
            if def.group.is_empty() && def.plural == "namespaces" {
                if st.count_in_namespace(&name) == 0 {
                    st.remove(res, "", &name);
                    changed = true;
                } else {
                    for (ores, o) in &all {
                        let (ons, _) = ns_name(o);
                        if ons == name && o.pointer("/metadata/deletionTimestamp").is_none() {
                            if let Some(odef) = st.registry.get(ores) {
                                if odef.namespaced {
                                    delete_object(st, &odef, o, Policy::Background, None);
                                    changed = true;
                                }
                            }
                        }
                    }
                }
                continue;
            }
        }
        let owners = owner_uids(obj);
        if !owners.is_empty()
            && owners.iter().all(|u| !uids.contains(u))
            && obj.pointer("/metadata/deletionTimestamp").is_none()
        {
            delete_object(st, &def, obj, Policy::Background, None);
            changed = true;
        }
    }
    let _ = namespaces_key();
    changed
}
