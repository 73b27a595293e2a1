//! get and list, with label/field selectors, limit/continue, Table output and metadata-only
//! (PartialObjectMetadata) output.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Reply, Request, Shared};
use crate::registry::ResourceDef;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::table;

/// The object as served at `version` (custom resources may be stored at another version).
pub fn present(def: &ResourceDef, version: &str, obj: &Arc<Value>) -> Value {
    let want = def.api_version(version);
    let mut v = (**obj).clone();
    if v.get("apiVersion").and_then(Value::as_str) != Some(want.as_str()) {
        v["apiVersion"] = Value::String(want);
    }
    v
}

/// The object reduced to its metadata, as a `meta.k8s.io/v1` PartialObjectMetadata.
pub fn metadata_only(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

pub fn get(shared: &Arc<Shared>, def: &ResourceDef, req: &Request) -> Result<Reply, ApiError> {
    let name = req.target.name.as_deref().unwrap_or("");
    let obj = {
        let st = shared.store.lock();
        st.get(&def.key(), req.namespace(), name)
    }
    .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    if req.wants_table() {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return Ok(Reply::Json(
            200,
            table::table(
                def,
                &req.target.version,
                &[obj],
                &rv,
                req.query.get("includeObject"),
            ),
        ));
    }
    if req.wants_metadata() {
        return Ok(Reply::Json(200, metadata_only(&obj)));
    }
    Ok(Reply::Json(200, present(def, &req.target.version, &obj)))
}

/// Parsed selectors of a list or watch.
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn from(req: &Request) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(req.query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(req.query.get("fieldSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        Ok(Selectors { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    let raw = format!("{rv}/{ns}/{name}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(String, String)> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let raw = String::from_utf8(bytes?).ok()?;
    let mut parts = raw.splitn(3, '/');
    let _rv = parts.next()?;
    Some((parts.next()?.to_string(), parts.next()?.to_string()))
}

fn meta_key(o: &Value) -> (String, String) {
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

pub fn list(shared: &Arc<Shared>, def: &ResourceDef, req: &Request) -> Result<Reply, ApiError> {
    let sel = Selectors::from(req)?;
    let limit: usize = match req.query.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let after = match req.query.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => Some(decode_continue(c).ok_or_else(|| {
            ApiError::bad_request("continue key is not valid: illegal base64 data")
        })?),
        None => None,
    };
    let (objects, rv) = {
        let st = shared.store.lock();
        let ns = req.target.namespace.as_deref();
        let objects = match sel.labels.equality() {
            Some(label) => st.list_labelled(&def.key(), ns, label),
            None => st.list(&def.key(), ns),
        };
        (objects, st.current_rv())
    };
    // kubesim keeps no snapshots: an exact past version cannot be served, so it is reported
    // as expired (clients re-list at the latest version, as after etcd compaction).
    if req.query.get("resourceVersionMatch") == Some("Exact") {
        let want = req.query.get("resourceVersion").unwrap_or("");
        if want != rv.to_string() {
            return Err(ApiError::gone(format!(
                "too old resource version: {want} ({rv}); kubesim serves only the latest state"
            )));
        }
    }
    let mut items: Vec<Arc<Value>> = objects
        .into_iter()
        .filter(|o| after.as_ref().is_none_or(|a| meta_key(o) > *a))
        .filter(|o| sel.matches(o))
        .collect();
    let mut cont = None;
    let mut remaining = 0;
    if limit > 0 && items.len() > limit {
        remaining = items.len() - limit;
        items.truncate(limit);
        if let Some(last) = items.last() {
            let (ns, name) = meta_key(last);
            cont = Some(encode_continue(rv, &ns, &name));
        }
    }
    let rv_s = rv.to_string();
    if req.wants_table() {
        return Ok(Reply::Json(
            200,
            table::table(
                def,
                &req.target.version,
                &items,
                &rv_s,
                req.query.get("includeObject"),
            ),
        ));
    }
    let mut meta = json!({"resourceVersion": rv_s});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
        meta["remainingItemCount"] = json!(remaining);
    }
    if req.wants_metadata() {
        let items: Vec<Value> = items.iter().map(|o| metadata_only(o)).collect();
        return Ok(Reply::Json(
            200,
            json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": items,
            }),
        ));
    }
    let items: Vec<Value> = items
        .iter()
        .map(|o| present(def, &req.target.version, o))
        .collect();
    Ok(Reply::Json(
        200,
        json!({
            "kind": def.list_kind(),
            "apiVersion": def.api_version(&req.target.version),
            "metadata": meta,
            "items": items,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_token_round_trips() {
        // A continue token names the last item returned so the next page starts after it.
        let t = encode_continue(7, "ns", "a-b");
        assert_eq!(decode_continue(&t), Some(("ns".into(), "a-b".into())));
        assert_eq!(decode_continue("zz"), None);
    }
}
