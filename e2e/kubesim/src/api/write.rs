//! create, update and patch (merge, JSON, strategic, server-side apply), sharing one commit
//! pipeline: preconditions → subresource scoping → decode/validate/default → managedFields →
//! generation → no-op check → store. Creates and applies prepare the object before taking the
//! store's lock and only store it under the lock (an apply is computed again when its object
//! changed meanwhile), so concurrent writes are not serialised on the expensive part.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::read::present;
use super::{now, parse_body, Reply, Request, Shared, Warnings};
use crate::patch::listtype::Oracle;
use crate::patch::managed::{self, Scope};
use crate::patch::{apply, strategic};
use crate::registry::ResourceDef;
use crate::status::{ApiError, Cause};
use crate::store::{EventType, State};
use crate::{crd, defaults, schema, validate};

/// How a write's managedFields are produced.
pub enum Managed {
    /// A non-apply write by this manager: it owns what it changed.
    Update(String),
    /// Already computed (server-side apply).
    Keep,
}

/// The request-level parameters of a write.
pub struct WriteCtx<'a> {
    pub def: &'a ResourceDef,
    pub version: &'a str,
    pub subresource: Option<&'a str>,
    pub dry_run: bool,
    pub strict: bool,
    /// Unknown fields are reported as `Warning` headers unless `fieldValidation=Ignore`.
    pub warn: Option<&'a Warnings>,
}

impl<'a> WriteCtx<'a> {
    pub fn new(def: &'a ResourceDef, req: &'a Request) -> Self {
        WriteCtx {
            def,
            version: &req.target.version,
            subresource: req.target.subresource.as_deref(),
            dry_run: req.query.dry_run(),
            strict: req.query.get("fieldValidation") == Some("Strict"),
            warn: (req.query.get("fieldValidation") != Some("Ignore")).then_some(&req.warnings),
        }
    }

    pub fn oracle(&self) -> Oracle<'a> {
        oracle(self.def, self.version)
    }

    pub fn scope(&self) -> Scope<'a> {
        match self.subresource {
            Some("status") => Scope {
                subresource: Some("status"),
                status_scope: Some(true),
            },
            sub => Scope {
                subresource: sub,
                status_scope: if self.def.status { Some(false) } else { None },
            },
        }
    }
}

pub fn oracle<'a>(def: &'a ResourceDef, version: &str) -> Oracle<'a> {
    Oracle {
        builtin: (!def.is_custom()).then_some((def.group.as_str(), def.plural.as_str())),
        schema: def.schemas.get(version),
    }
}

fn meta_str<'v>(v: &'v Value, field: &str) -> Option<&'v str> {
    v.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn meta_mut(v: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

/// Checks (and fills in) `apiVersion` and `kind` of a request body.
fn check_kind(def: &ResourceDef, version: &str, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the object provided is not a JSON object ({} expected)",
            def.kind
        )));
    }
    let want_av = def.api_version(version);
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(want_av),
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )))
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(def.kind),
        Some(k) if k == def.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )))
        }
    }
    Ok(())
}

/// Paths of fields present in `input` but dropped by decoding.
pub(super) fn unknown_fields(input: &Value, output: &Value, prefix: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match o.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{prefix}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes, prunes, defaults and validates an object as the real server does on write;
/// `old` is the stored object of an update (for CEL transition rules and ratcheting).
pub fn normalize(w: &WriteCtx, obj: Value, old: Option<&Value>) -> Result<Value, ApiError> {
    let def = w.def;
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    let (mut out, unknown, mut causes) = if let Some(decoder) = def.decoder {
        let decoded = decoder(&obj).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version {:?} cannot be handled as a {}: {e}",
                def.kind, w.version, def.kind
            ))
        })?;
        let mut unknown = Vec::new();
        unknown_fields(&obj, &decoded, "", &mut unknown);
        (decoded, unknown, Vec::new())
    } else {
        let mut processed = schema::process(def.schemas.get(w.version), obj);
        // Compiled with the schema when the CRD was stored.
        if let Some(rules) = def.cel_rules.get(w.version) {
            validation_rules(rules, &processed.object, old, &mut processed.causes);
        }
        (processed.object, processed.unknown, processed.causes)
    };
    if let (false, Some(warnings)) = (w.strict, w.warn) {
        for u in &unknown {
            warnings.push(format!("unknown field {u:?}"));
        }
    }
    if w.strict && !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field {u:?}"))
            .collect();
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            list.join(", ")
        )));
    }
    if def.decoder.is_some() {
        defaults::apply(&def.group, &def.kind, &mut out);
        causes.extend(validate::builtin(&def.group, &def.kind, &out));
    } else {
        validate::metadata(&out, false, &mut causes);
    }
    if def.group == "apiextensions.k8s.io" && def.kind == "CustomResourceDefinition" {
        causes.extend(crd::validate(&out));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(&def.group, &def.kind, &name, causes));
    }
    Ok(out)
}

/// Evaluates the schema's CEL rules, unless the object has the wrong type somewhere (the
/// real server then skips them and says so).
fn validation_rules(
    rules: &schema::cel::Node,
    obj: &Value,
    old: Option<&Value>,
    causes: &mut Vec<Cause>,
) {
    if causes.iter().any(|c| c.reason == "FieldValueTypeInvalid") {
        if rules.has_rules() {
            causes.push(Cause::invalid("<nil>", &Value::Null, "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"));
        }
        return;
    }
    schema::cel::validate(rules, obj, old, "", causes);
}

/// Random suffix for `generateName`, from the real server's alphabet.
fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Whether anything that counts as spec for `metadata.generation` differs (all but
/// metadata and status).
fn spec_changed(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a != b;
    };
    let outside = |k: &String| k != "metadata" && k != "status";
    a.iter().filter(|(k, _)| outside(k)).count() != b.iter().filter(|(k, _)| outside(k)).count()
        || a.iter()
            .filter(|(k, _)| outside(k))
            .any(|(k, v)| b.get(k) != Some(v))
}

/// The part of creating an object (`obj` has passed `check_kind`) that needs no store: the new object's metadata, decoding, defaulting
/// and validation, and its managedFields. Done before the store is locked, so writes to
/// different objects are prepared in parallel; [`finish_create`] stores the result.
pub fn prepare_create(
    w: &WriteCtx,
    ns: &str,
    mut obj: Value,
    managed_by: Managed,
) -> Result<Value, ApiError> {
    let def = w.def;
    {
        let meta = meta_mut(&mut obj)?;
        if def.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(x) if !x.is_empty() && x != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            if let Some(g) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|g| !g.is_empty())
            {
                let generated = format!("{g}{}", random_suffix());
                meta.insert("name".into(), json!(generated));
            }
        }
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            meta.remove(f);
        }
    }
    if def.status && !(def.group.is_empty() && def.plural == "namespaces") {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    let mut obj = normalize(w, obj, None)?;
    obj["apiVersion"] = json!(def.api_version(def.preferred_version()));
    let ts = now();
    {
        let meta = meta_mut(&mut obj)?;
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(ts));
        meta.insert("generation".into(), json!(1));
    }
    if let Managed::Update(m) = &managed_by {
        managed::record_update(
            None,
            &mut obj,
            m,
            &def.api_version(w.version),
            w.scope(),
            &w.oracle(),
            &ts,
        );
    }
    Ok(obj)
}

/// Stores an object [`prepare_create`] made, unless its namespace is missing or terminating or
/// the name is taken.
pub fn finish_create(
    st: &mut State,
    w: &WriteCtx,
    ns: &str,
    mut obj: Value,
) -> Result<Value, ApiError> {
    let def = w.def;
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    if def.namespaced {
        match st.get(&namespaces_key(), "", ns) {
            None => return Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                let mut e = ApiError::new(
                    403,
                    "Forbidden",
                    format!("{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated", crate::status::qualified(&def.group, &def.plural)),
                );
                e.details.name = Some(name.clone());
                e.details.kind = Some(def.plural.clone());
                return Err(e);
            }
            Some(_) => {}
        }
    }
    if st.get(&def.key(), ns, &name).is_some() {
        return Err(ApiError::already_exists(&def.group, &def.plural, &name));
    }
    if crd::is_crd(def) {
        crd::admit(st, &mut obj, None)?;
    }
    if w.dry_run {
        return Ok(obj);
    }
    let stored = st.put(&def.key(), ns, &name, obj, EventType::Added);
    if crd::is_crd(def) {
        crd::register(st, &stored);
    }
    super::delete::collect_orphan(st, def, &stored);
    Ok((*stored).clone())
}

pub fn namespaces_key() -> crate::registry::ResKey {
    crate::registry::ResKey {
        group: String::new(),
        plural: "namespaces".into(),
    }
}

/// Replaces `old` with `new` (an update or a patch result). Returns the stored object.
pub fn commit_update(
    st: &mut State,
    w: &WriteCtx,
    old: &Arc<Value>,
    new: Value,
    managed_by: Managed,
) -> Result<Value, ApiError> {
    let new = prepare_update(w, old, new, managed_by)?;
    finish_update(st, w, old, new)
}

/// The part of an update that reads only the stored object `old`: preconditions, subresource
/// scoping, decoding, defaulting, validation, managedFields and generation. Done before the
/// store is locked; [`finish_update`] stores the result, which is valid only while `old` is
/// still the stored object.
pub fn prepare_update(
    w: &WriteCtx,
    old: &Arc<Value>,
    new: Value,
    managed_by: Managed,
) -> Result<Value, ApiError> {
    let def = w.def;
    let name = meta_str(old, "name").unwrap_or("").to_string();
    check_preconditions(def, old, &new, &name)?;
    let mut new = scope_to_subresource(w, old, new, &managed_by);
    carry_system_metadata(def, old, &mut new, &managed_by, &name)?;
    let mut new = normalize(w, new, Some(old))?;
    new["apiVersion"] = json!(def.api_version(def.preferred_version()));
    immutable(def, old, &new)?;
    if let Managed::Update(m) = &managed_by {
        managed::record_update(
            Some(old),
            &mut new,
            m,
            &def.api_version(w.version),
            w.scope(),
            &w.oracle(),
            &now(),
        );
    }
    new["metadata"]["generation"] = json!(next_generation(old, &new));
    Ok(new)
}

/// Stores what [`prepare_update`] made of `old`, unless nothing changed.
pub fn finish_update(
    st: &mut State,
    w: &WriteCtx,
    old: &Arc<Value>,
    mut new: Value,
) -> Result<Value, ApiError> {
    let def = w.def;
    let name = meta_str(old, "name").unwrap_or("").to_string();
    let ns = meta_str(old, "namespace").unwrap_or("").to_string();
    if crd::is_crd(def) {
        crd::admit(st, &mut new, Some(old))?;
    }
    // `new` carries the old resourceVersion (copied above), so plain equality means no change.
    if new == **old {
        return Ok((**old).clone());
    }
    if w.dry_run {
        return Ok(new);
    }
    Ok(store_update(st, def, &ns, &name, new))
}

/// The optimistic-concurrency and identity preconditions of an update: resourceVersion and
/// uid (when the body sets them) must be the stored ones, and the name must not change.
fn check_preconditions(
    def: &ResourceDef,
    old: &Value,
    new: &Value,
    name: &str,
) -> Result<(), ApiError> {
    if let Some(rv) = meta_str(new, "resourceVersion").filter(|r| !r.is_empty()) {
        if Some(rv) != meta_str(old, "resourceVersion") {
            return Err(ApiError::stale(&def.group, &def.plural, name));
        }
    }
    if let Some(uid) = meta_str(new, "uid").filter(|u| !u.is_empty()) {
        if Some(uid) != meta_str(old, "uid") {
            return Err(ApiError::conflict(
                &def.group,
                &def.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {uid}",
                    meta_str(old, "uid").unwrap_or("")
                ),
            ));
        }
    }
    if let Some(n) = meta_str(new, "name") {
        if n != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    Ok(())
}

/// What a write may change: a `status` write changes only the status (and, for apply, the
/// managedFields it computed); a main-resource write of a kind with a status subresource
/// keeps the stored status.
fn scope_to_subresource(w: &WriteCtx, old: &Value, mut new: Value, managed_by: &Managed) -> Value {
    match w.subresource {
        Some("status") => {
            let mut merged = old.clone();
            match new.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            if matches!(managed_by, Managed::Keep) {
                if let Some(mf) = new.pointer("/metadata/managedFields") {
                    merged["metadata"]["managedFields"] = mf.clone();
                }
            }
            merged
        }
        _ if w.def.status => {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new
        }
        _ => new,
    }
}

/// Copies the server-owned metadata (identity, timestamps, generation, resourceVersion and,
/// unless apply computed them, managedFields) from the stored object, and refuses new
/// finalizers on an object being deleted.
fn carry_system_metadata(
    def: &ResourceDef,
    old: &Value,
    new: &mut Value,
    managed_by: &Managed,
    name: &str,
) -> Result<(), ApiError> {
    let old_meta = old
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let meta = meta_mut(new)?;
    for f in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
    ] {
        match old_meta.get(f) {
            Some(v) => meta.insert(f.into(), v.clone()),
            None => meta.remove(f),
        };
    }
    if !matches!(managed_by, Managed::Keep) {
        match old_meta.get("managedFields") {
            Some(v) => meta.insert("managedFields".into(), v.clone()),
            None => meta.remove("managedFields"),
        };
    }
    if !old_meta.contains_key("deletionTimestamp") {
        return Ok(());
    }
    // Finalizers may only be removed from an object being deleted.
    let finalizers = |m: &Map<String, Value>| {
        m.get("finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let old_f = finalizers(&old_meta);
    if finalizers(meta).iter().any(|f| !old_f.contains(f)) {
        return Err(ApiError::invalid(
            &def.group,
            &def.kind,
            name,
            vec![Cause::new(
                "FieldValueForbidden",
                "Forbidden: no new finalizers can be added if the object is being deleted",
                "metadata.finalizers",
            )],
        ));
    }
    Ok(())
}

/// `metadata.generation` after the update: one more when anything outside metadata and
/// status changed.
fn next_generation(old: &Value, new: &Value) -> i64 {
    let generation = old
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if spec_changed(new, old) {
        generation + 1
    } else {
        generation
    }
}

/// Stores an updated object. An object being deleted whose last finalizer is gone is removed
/// (after a final MODIFIED event) and garbage collection runs; a CRD (re)registers or
/// unregisters its resource.
fn store_update(st: &mut State, def: &ResourceDef, ns: &str, name: &str, new: Value) -> Value {
    let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
    let finished = terminating
        && new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    let stored = st.put(&def.key(), ns, name, new, EventType::Modified);
    if finished {
        st.remove(&def.key(), ns, name);
        if crd::is_crd(def) {
            crd::unregister(st, &stored);
        }
        super::collect_garbage(st);
        return (*stored).clone();
    }
    if crd::is_crd(def) {
        crd::register(st, &stored);
    }
    if terminating {
        super::collect_garbage(st);
    }
    (*stored).clone()
}

/// Fields the real server refuses to change after creation.
fn immutable(def: &ResourceDef, old: &Value, new: &Value) -> Result<(), ApiError> {
    let name = meta_str(old, "name").unwrap_or("");
    let check = |ptr: &str, field: &str| -> Option<Cause> {
        let (o, n) = (old.pointer(ptr), new.pointer(ptr));
        (o.is_some() && o != n)
            .then(|| Cause::invalid(field, n.unwrap_or(&Value::Null), "field is immutable"))
    };
    let cause = match (def.group.as_str(), def.plural.as_str()) {
        ("apps", "deployments") | ("apps", "replicasets") => {
            check("/spec/selector", "spec.selector")
        }
        ("", "services") => check("/spec/clusterIP", "spec.clusterIP"),
        ("apiextensions.k8s.io", "customresourcedefinitions") => check("/spec/scope", "spec.scope"),
        _ => None,
    };
    match cause {
        Some(c) => Err(ApiError::invalid(&def.group, &def.kind, name, vec![c])),
        None => Ok(()),
    }
}

pub fn create(shared: &Arc<Shared>, def: &ResourceDef, req: &Request) -> Result<Reply, ApiError> {
    let w = WriteCtx::new(def, req);
    let mut obj = parse_body(req, def)?;
    check_kind(def, w.version, &mut obj)?;
    let obj = prepare_create(&w, req.namespace(), obj, Managed::Update(req.manager()))?;
    let mut st = shared.store.lock();
    let out = finish_create(&mut st, &w, req.namespace(), obj)?;
    Ok(Reply::Json(201, out))
}

fn load(st: &State, def: &ResourceDef, req: &Request) -> Option<Arc<Value>> {
    st.get(
        &def.key(),
        req.namespace(),
        req.target.name.as_deref().unwrap_or(""),
    )
}

fn target_name(req: &Request) -> &str {
    req.target.name.as_deref().unwrap_or("")
}

pub fn update(shared: &Arc<Shared>, def: &ResourceDef, req: &Request) -> Result<Reply, ApiError> {
    let w = WriteCtx::new(def, req);
    let mut obj = parse_body(req, def)?;
    check_kind(def, w.version, &mut obj)?;
    let mut st = shared.store.lock();
    let old = load(&st, def, req)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, target_name(req)))?;
    let out = commit_update(&mut st, &w, &old, obj, Managed::Update(req.manager()))?;
    Ok(Reply::Json(200, present(def, w.version, &Arc::new(out))))
}

pub fn patch(shared: &Arc<Shared>, def: &ResourceDef, req: &Request) -> Result<Reply, ApiError> {
    let w = WriteCtx::new(def, req);
    let ct = req
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if ct == "application/apply-patch+yaml" {
        return apply_patch(shared, def, req, &w);
    }
    let patch_doc: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mut st = shared.store.lock();
    let old = load(&st, def, req)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, target_name(req)))?;
    let mut doc = present(def, w.version, &old);
    let name = target_name(req);
    match ct.as_str() {
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch_doc)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::invalid(&def.group, &def.kind, name, vec![Cause::new("FieldValueInvalid", e.to_string(), "")])
            })?;
        }
        "application/merge-patch+json" => json_patch::merge(&mut doc, &patch_doc),
        "application/strategic-merge-patch+json" => {
            if def.is_custom() {
                return Err(ApiError::unsupported_media_type(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            strategic::apply(&mut doc, &patch_doc, &w.oracle()).map_err(ApiError::bad_request)?;
        }
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            )))
        }
    }
    check_kind(def, w.version, &mut doc)?;
    let out = commit_update(&mut st, &w, &old, doc, Managed::Update(req.manager()))?;
    Ok(Reply::Json(200, present(def, w.version, &Arc::new(out))))
}

fn apply_patch(
    shared: &Arc<Shared>,
    def: &ResourceDef,
    req: &Request,
    w: &WriteCtx,
) -> Result<Reply, ApiError> {
    // Apply configurations are YAML, and most clients (kube-rs, client-go) send JSON, which is
    // YAML too: read as JSON first, which is several times faster, else as YAML.
    let mut body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(_) => serde_norway::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
    };
    let Some(manager) = req.query.get("fieldManager").filter(|m| !m.is_empty()) else {
        return Err(ApiError::bad_request(
            "PATCH, fieldManager must be set for apply requests",
        ));
    };
    if manager.len() > 128 {
        return Err(ApiError::bad_request(
            "fieldManager must not be longer than 128 characters",
        ));
    }
    check_kind(def, w.version, &mut body)?;
    let name = target_name(req);
    match meta_str(&body, "name") {
        Some(n) if n == name => {}
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )))
        }
        None => body["metadata"]["name"] = json!(name),
    }
    let force = req.query.flag("force");
    // The apply is computed from a snapshot of the stored object without holding the store,
    // and stored only if that object is still the stored one; otherwise it is computed again
    // (the real server's optimistic update loop). Writes to different objects then use every
    // core, not one at a time under the store's lock.
    loop {
        let old = load(&shared.store.lock(), def, req);
        if let (Some(old), Some(rv)) = (&old, meta_str(&body, "resourceVersion")) {
            if Some(rv) != meta_str(old, "resourceVersion") {
                return Err(ApiError::stale(&def.group, &def.plural, name));
            }
        }
        let api_version = def.api_version(w.version);
        let ts = now();
        let applier = apply::Applier {
            manager,
            force,
            api_version: &api_version,
            scope: w.scope(),
            oracle: w.oracle(),
            now: &ts,
        };
        let merged = apply::apply(old.as_deref(), &body, &applier).map_err(|conflicts| {
            let mut e = ApiError::conflict(&def.group, &def.plural, name, "");
            e.message = apply::conflict_message(&conflicts);
            e.details.causes = conflicts
                .iter()
                .map(|c| {
                    Cause::new(
                        "FieldManagerConflict",
                        format!("conflict with {:?} using {}", c.manager, c.api_version),
                        c.field.clone(),
                    )
                })
                .collect();
            e
        })?;
        let still = |st: &State| match (load(st, def, req), &old) {
            (None, None) => true,
            (Some(now), Some(then)) => Arc::ptr_eq(&now, then),
            _ => false,
        };
        match old {
            None if w.subresource.is_some() => {
                return Err(ApiError::not_found(&def.group, &def.plural, name))
            }
            None => {
                let new = prepare_create(w, req.namespace(), merged, Managed::Keep)?;
                let mut st = shared.store.lock();
                if !still(&st) {
                    continue;
                }
                let out = finish_create(&mut st, w, req.namespace(), new)?;
                return Ok(Reply::Json(201, out));
            }
            Some(ref then) => {
                let new = prepare_update(w, then, merged, Managed::Keep)?;
                let mut st = shared.store.lock();
                if !still(&st) {
                    continue;
                }
                let out = finish_update(&mut st, w, then, new)?;
                return Ok(Reply::Json(200, present(def, w.version, &Arc::new(out))));
            }
        }
    }
}
