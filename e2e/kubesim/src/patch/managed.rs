//! `metadata.managedFields` bookkeeping: who owns which fields, updated on every write.
//! Non-apply writes (create, update, merge/JSON/strategic patch) give their manager the fields
//! they changed and take those fields from other managers, as the real server does.

use serde_json::{json, Map, Value};

use super::fields::{self, FieldSet};
use super::listtype::Oracle;

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    pub fn is(&self, manager: &str, operation: &str, sub: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == sub
    }
}

/// Where a write lands: the main resource or a subresource, and what part of the object it
/// may change (`Some(true)`: only status; `Some(false)`: all but status; `None`: all).
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub subresource: Option<&'a str>,
    pub status_scope: Option<bool>,
}

pub fn read(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("Update")
                    .to_string(),
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(String::from),
                fields: e
                    .get("fieldsV1")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            })
        })
        .collect()
}

pub fn write(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), json!(e.manager));
            m.insert("operation".into(), json!(e.operation));
            m.insert("apiVersion".into(), json!(e.api_version));
            m.insert("time".into(), json!(e.time));
            m.insert("fieldsType".into(), json!("FieldsV1"));
            m.insert("fieldsV1".into(), Value::Object(e.fields.clone()));
            if let Some(s) = &e.subresource {
                m.insert("subresource".into(), json!(s));
            }
            Value::Object(m)
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Records a non-apply write by `manager` that turned `old` (absent on create) into `new`.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    scope: Scope,
    oracle: &Oracle,
    now: &str,
) {
    let mut entries = old.map(read).unwrap_or_default();
    let changed = match old {
        Some(o) => fields::changed(o, new, oracle, scope.status_scope),
        None => fields::of_object(new, oracle, scope.status_scope),
    };
    let present = fields::of_object(new, oracle, None);
    let mut found = false;
    for e in entries.iter_mut() {
        if e.is(manager, "Update", scope.subresource) {
            found = true;
            let owned = fields::union(&e.fields, &changed);
            let owned = fields::intersection(&owned, &present);
            if owned != e.fields || !changed.is_empty() {
                e.time = now.to_string();
                e.api_version = api_version.to_string();
            }
            e.fields = owned;
        } else {
            e.fields = fields::intersection(&fields::difference(&e.fields, &changed), &present);
        }
    }
    if !found && !changed.is_empty() {
        entries.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: api_version.to_string(),
            time: now.to_string(),
            subresource: scope.subresource.map(String::from),
            fields: fields::intersection(&changed, &present),
        });
    }
    entries.retain(|e| !e.fields.is_empty());
    write(new, &entries);
}
