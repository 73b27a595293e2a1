//! The `scale` subresource (Deployments, ReplicaSets and custom resources that declare
//! one) and pod `binding`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::read::present;
use super::write::{commit_update, Managed, WriteCtx};
use super::{parse_body, Reply, Request, Shared};
use crate::patch::listtype::Oracle;
use crate::patch::strategic;
use crate::registry::ResourceDef;
use crate::selectors::LabelSelector;
use crate::status::{ApiError, Cause};

fn pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |mut acc, p| {
            acc.push('/');
            acc.push_str(p);
            acc
        })
}

/// The `autoscaling/v1` Scale of an object.
fn scale_of(def: &ResourceDef, obj: &Value) -> Value {
    let Some(paths) = &def.scale else {
        return Value::Null;
    };
    let spec = obj
        .pointer(&pointer(&paths.spec_replicas))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let status = obj
        .pointer(&pointer(&paths.status_replicas))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = paths
        .label_selector
        .as_ref()
        .and_then(|p| obj.pointer(&pointer(p)))
        .map(|s| match s {
            Value::String(s) => s.clone(),
            other => LabelSelector::from_object(other).to_query(),
        });
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut status_v = json!({"replicas": status});
    if let Some(sel) = selector {
        status_v["selector"] = json!(sel);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": spec},
        "status": status_v,
    })
}

pub fn handle(
    shared: &Arc<Shared>,
    def: &Arc<ResourceDef>,
    req: Request,
) -> Result<Reply, ApiError> {
    let name = req.target.name.clone().unwrap_or_default();
    let mut st = shared.store.lock();
    let old = st
        .get(&def.key(), req.namespace(), &name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, &name))?;
    let current = scale_of(def, &old);
    let new_scale = match req.method {
        http::Method::GET => return Ok(Reply::Json(200, current)),
        http::Method::PUT => parse_body(&req, def)?,
        http::Method::PATCH => {
            let patch: Value = serde_json::from_slice(&req.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = current.clone();
            match req.content_type.split(';').next().unwrap_or("") {
                "application/merge-patch+json" => json_patch::merge(&mut doc, &patch),
                "application/strategic-merge-patch+json" => {
                    let oracle = Oracle {
                        builtin: Some(("autoscaling", "scale")),
                        schema: None,
                    };
                    strategic::apply(&mut doc, &patch, &oracle).map_err(ApiError::bad_request)?
                }
                "application/json-patch+json" => {
                    let ops: json_patch::Patch = serde_json::from_value(patch)
                        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                    json_patch::patch(&mut doc, &ops)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?;
                }
                other => {
                    return Err(ApiError::unsupported_media_type(format!(
                        "the scale subresource does not accept {other:?} patches"
                    )))
                }
            }
            doc
        }
        ref m => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({m})"
            )))
        }
    };
    let replicas = new_scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            &name,
            vec![Cause::invalid(
                "spec.replicas",
                &json!(replicas),
                "must be greater than or equal to 0",
            )],
        ));
    }
    if let Some(rv) = new_scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        if Some(rv)
            != old
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
        {
            return Err(ApiError::stale(&def.group, &def.plural, &name));
        }
    }
    let Some(paths) = &def.scale else {
        return Err(ApiError::no_route());
    };
    let mut updated = (*old).clone();
    if let Some(slot) = updated.pointer_mut(&pointer(&paths.spec_replicas)) {
        *slot = json!(replicas);
    } else {
        let parts: Vec<&str> = paths
            .spec_replicas
            .trim_start_matches('.')
            .split('.')
            .collect();
        let mut cur = &mut updated;
        for (i, p) in parts.iter().enumerate() {
            let Some(m) = cur.as_object_mut() else {
                return Err(ApiError::internal(format!(
                    "cannot set {} on this object",
                    paths.spec_replicas
                )));
            };
            if i + 1 == parts.len() {
                m.insert(p.to_string(), json!(replicas));
                break;
            }
            let slot = m.entry(p.to_string()).or_insert_with(|| json!({}));
            if !slot.is_object() {
                *slot = json!({});
            }
            cur = slot;
        }
    }
    let w = WriteCtx {
        def,
        version: &req.target.version,
        subresource: Some("scale"),
        dry_run: req.query.dry_run(),
        strict: false,
        warn: None,
    };
    let out = commit_update(&mut st, &w, &old, updated, Managed::Update(req.manager()))?;
    Ok(Reply::Json(
        200,
        scale_of(
            def,
            &Arc::new(present(def, &req.target.version, &Arc::new(out))),
        ),
    ))
}

/// `POST pods/<name>/binding`: assigns a pod to a node, as the scheduler does.
pub fn bind(shared: &Arc<Shared>, def: &Arc<ResourceDef>, req: Request) -> Result<Reply, ApiError> {
    let name = req.target.name.clone().unwrap_or_default();
    let body = parse_body(&req, def)?;
    let node = body
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            &name,
            vec![Cause::required("target.name")],
        ));
    }
    let mut st = shared.store.lock();
    let old = st
        .get(&def.key(), req.namespace(), &name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, &name))?;
    if old
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        return Err(ApiError::conflict(
            "",
            "pods",
            &name,
            &format!("pod {name} is already assigned to node {node:?}"),
        ));
    }
    let mut updated = (*old).clone();
    updated["spec"]["nodeName"] = json!(node);
    let w = WriteCtx {
        def,
        version: &req.target.version,
        subresource: None,
        dry_run: false,
        strict: false,
        warn: None,
    };
    commit_update(&mut st, &w, &old, updated, Managed::Update(req.manager()))?;
    Ok(Reply::Json(
        201,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}
