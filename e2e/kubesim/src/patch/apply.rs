//! Server-side apply: merge an applied configuration into the live object, detect conflicts
//! with other field managers, remove fields the manager stopped applying and record
//! ownership in `managedFields`. Pure functions; the caller validates and stores the result.

use serde_json::{Map, Value};

use super::fields::{self, FieldSet};
use super::listtype::{ListType, Oracle};
use super::managed::{self, Entry, Scope};

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub field: String,
}

/// The metadata fields an applied configuration may set.
const APPLIED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "generateName",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
];

fn scoped(applied: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    let Some(m) = applied.as_object() else {
        return Value::Object(out);
    };
    for (k, v) in m {
        match (k.as_str(), scope.status_scope) {
            ("apiVersion" | "kind", _) => {
                out.insert(k.clone(), v.clone());
            }
            ("metadata", _) => {
                let meta: Map<String, Value> = v
                    .as_object()
                    .map(|mm| {
                        mm.iter()
                            .filter(|(k, _)| APPLIED_METADATA.contains(&k.as_str()))
                            .filter(|(k, _)| {
                                scope.status_scope != Some(true)
                                    || matches!(k.as_str(), "name" | "namespace")
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Object(meta));
            }
            ("status", Some(false)) => {}
            ("status", _) => {
                out.insert(k.clone(), v.clone());
            }
            (_, Some(true)) => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Who applies, and how: the parameters of one server-side apply request.
#[derive(Debug, Clone, Copy)]
pub struct Applier<'a> {
    pub manager: &'a str,
    pub force: bool,
    /// The apiVersion the request used (recorded in managedFields).
    pub api_version: &'a str,
    pub scope: Scope<'a>,
    pub oracle: Oracle<'a>,
    /// The timestamp recorded for changed managedFields entries.
    pub now: &'a str,
}

/// Applies `applied` as `a.manager`. Returns the new object (with managedFields) or the
/// conflicts when `a.force` is false.
pub fn apply(live: Option<&Value>, applied: &Value, a: &Applier) -> Result<Value, Vec<Conflict>> {
    let Applier {
        manager,
        force,
        api_version,
        scope,
        oracle,
        now,
    } = *a;
    let oracle = &oracle;
    let applied = scoped(applied, scope);
    let applied_fields = fields::of_object(&applied, oracle, scope.status_scope);
    let live_obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    let mut entries = managed::read(&live_obj);

    let mut conflicts = Vec::new();
    let mut conflict_sets: Vec<(usize, FieldSet)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        // Managers of other subresources count too: a field set through `scale` (an
        // autoscaler) conflicts with applying `spec.replicas`, as on a real server.
        if e.manager == manager {
            continue;
        }
        let common = fields::intersection(&applied_fields, &e.fields);
        let mut lost = FieldSet::new();
        for leaf in fields::value_leaves(&common) {
            let lv = fields::get_path(&live_obj, &leaf);
            let av = fields::get_path(&applied, &leaf);
            if !same_value(lv, av) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    field: fields::display_path(&leaf),
                });
                lost = fields::union(&lost, &path_set(&leaf));
            }
        }
        if !lost.is_empty() {
            conflict_sets.push((i, lost));
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for (i, lost) in conflict_sets {
        entries[i].fields = fields::difference(&entries[i].fields, &lost);
    }

    let mut merged = live_obj.clone();
    let mut path = Vec::new();
    merge(&mut merged, &applied, &mut path, oracle);

    let own = entries
        .iter()
        .position(|e| e.is(manager, "Apply", scope.subresource));
    let prev = own.map(|i| entries[i].fields.clone()).unwrap_or_default();
    let others = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != own)
        .fold(FieldSet::new(), |acc, (_, e)| {
            fields::union(&acc, &e.fields)
        });
    let dropped = fields::difference(&fields::difference(&prev, &applied_fields), &others);
    fields::remove(&mut merged, &dropped);

    let content_changed = content_differs(&merged, &live_obj);
    match own {
        Some(i) => {
            if content_changed || entries[i].fields != applied_fields {
                entries[i].time = now.to_string();
                entries[i].api_version = api_version.to_string();
            }
            entries[i].fields = applied_fields;
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version: api_version.to_string(),
            time: now.to_string(),
            subresource: scope.subresource.map(String::from),
            fields: applied_fields,
        }),
    }
    entries.retain(|e| !e.fields.is_empty());
    managed::write(&mut merged, &entries);
    Ok(merged)
}

/// Whether a live value and an applied value are the same. A number applied where the server
/// stores its string form (a Quantity such as `cpu: 1`) counts as the same value, since the
/// server normalises it on write.
fn same_value(live: Option<&Value>, applied: Option<&Value>) -> bool {
    match (live, applied) {
        (Some(Value::String(s)), Some(Value::Number(n))) => *s == n.to_string(),
        (l, a) => l == a,
    }
}

/// Whether two objects differ other than in managedFields and resourceVersion.
fn content_differs(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a != b;
    };
    let keys_a = a.keys().filter(|k| *k != "metadata").count();
    let keys_b = b.keys().filter(|k| *k != "metadata").count();
    if keys_a != keys_b
        || a.iter()
            .any(|(k, v)| k != "metadata" && b.get(k) != Some(v))
    {
        return true;
    }
    let empty = Map::new();
    let ma = a
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mb = b
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let skip = |k: &String| k != "managedFields" && k != "resourceVersion";
    ma.iter().filter(|(k, _)| skip(k)).count() != mb.iter().filter(|(k, _)| skip(k)).count()
        || ma
            .iter()
            .filter(|(k, _)| skip(k))
            .any(|(k, v)| mb.get(k) != Some(v))
}

fn path_set(path: &[String]) -> FieldSet {
    let mut node = Value::Object(Map::new());
    for pe in path.iter().rev() {
        let mut m = Map::new();
        m.insert(pe.clone(), node);
        node = Value::Object(m);
    }
    match node {
        Value::Object(m) => m,
        _ => FieldSet::new(),
    }
}

/// Structured merge: maps merge by key, keyed lists by item key, sets by value, anything
/// else (scalars, atomic lists) is replaced by the applied value.
fn merge(live: &mut Value, applied: &Value, path: &mut Vec<String>, oracle: &Oracle) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    l.remove(k);
                    continue;
                }
                path.push(k.clone());
                match l.get_mut(k) {
                    Some(lv) if lv.is_object() && av.is_object() => merge(lv, av, path, oracle),
                    Some(lv) if lv.is_array() && av.is_array() => merge(lv, av, path, oracle),
                    _ => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => match oracle.list_type(path) {
            ListType::Map(keys) => {
                for item in a {
                    let key = fields::item_key(item, &keys);
                    match l.iter_mut().find(|li| fields::item_key(li, &keys) == key) {
                        Some(li) => merge(li, item, path, oracle),
                        None => l.push(item.clone()),
                    }
                }
            }
            ListType::Set => {
                for item in a {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
            }
            ListType::Atomic => *l = a.clone(),
        },
        (live, applied) => *live = applied.clone(),
    }
}

/// The `Status` message of a failed apply, as the real server words it.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {:?} using {}: {}",
            c.manager, c.api_version, c.field
        );
    }
    let mut s = format!("Apply failed with {} conflicts: ", conflicts.len());
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict with {:?} using {}: {}",
                c.manager, c.api_version, c.field
            )
        })
        .collect();
    s.push_str(&lines.join("\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn oracle() -> Oracle<'static> {
        Oracle {
            builtin: Some(("apps", "deployments")),
            schema: None,
        }
    }

    fn applier(manager: &'static str, force: bool, now: &'static str) -> Applier<'static> {
        Applier {
            manager,
            force,
            api_version: "apps/v1",
            scope: main_scope(),
            oracle: oracle(),
            now,
        }
    }

    fn main_scope() -> Scope<'static> {
        Scope {
            subresource: None,
            status_scope: Some(false),
        }
    }

    fn cfg(replicas: i64, containers: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn reapply_is_a_fixed_point() {
        // Applying the same configuration twice gives the same object.
        let c = cfg(1, json!([{"name": "a", "image": "x"}]));
        let first = apply(None, &c, &applier("m", false, NOW)).expect("applies");
        let second = apply(Some(&first), &c, &applier("m", false, "later")).expect("applies");
        assert_eq!(first, second);
    }

    #[test]
    fn other_manager_conflicts_unless_forced() {
        // A field owned by another manager with a different value is a conflict; force takes it.
        let first = apply(None, &cfg(1, json!([])), &applier("a", false, NOW)).expect("applies");
        let err = apply(Some(&first), &cfg(2, json!([])), &applier("b", false, NOW))
            .expect_err("conflicts");
        assert_eq!(err[0].field, ".spec.replicas");
        assert_eq!(err[0].manager, "a");
        let forced =
            apply(Some(&first), &cfg(2, json!([])), &applier("b", true, NOW)).expect("force wins");
        assert_eq!(forced["spec"]["replicas"], 2);
    }

    #[test]
    fn a_dropped_section_is_removed_whole() {
        // Removing a whole struct from the configuration removes it, not just its fields; a
        // section another manager still has fields in stays.
        let with = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 1, "strategy": {"rollingUpdate": {"maxSurge": 1}}}});
        let a = apply(None, &with, &applier("m", false, NOW)).expect("applies");
        let c = apply(Some(&a), &cfg(1, json!([])), &applier("m", false, NOW)).expect("applies");
        assert!(c["spec"].get("strategy").is_none(), "{c}");

        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"strategy": {"type": "RollingUpdate"}}});
        let b = apply(Some(&a), &other, &applier("n", false, NOW)).expect("applies");
        let c = apply(Some(&b), &cfg(1, json!([])), &applier("m", false, NOW)).expect("applies");
        assert_eq!(c["spec"]["strategy"], json!({"type": "RollingUpdate"}));
    }

    #[test]
    fn dropped_fields_are_removed_and_lists_merge_by_key() {
        // A container the manager stops applying is removed; another manager's container stays.
        let both = cfg(
            1,
            json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]),
        );
        let a = apply(None, &both, &applier("m", false, NOW)).expect("applies");
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "z"}]}}}});
        let b = apply(Some(&a), &other, &applier("n", false, NOW)).expect("applies");
        let c = apply(
            Some(&b),
            &cfg(1, json!([{"name": "a", "image": "x"}])),
            &applier("m", false, NOW),
        )
        .expect("applies");
        let names: Vec<&str> = c["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, vec!["a", "c"]);
    }

    #[test]
    fn quantity_numbers_match_their_stored_strings() {
        // `cpu: 1` applied over a stored "1" is not a conflict.
        assert!(same_value(Some(&json!("1")), Some(&json!(1))));
        assert!(!same_value(Some(&json!("2")), Some(&json!(1))));
        assert!(!same_value(None, Some(&json!(1))));
    }

    #[test]
    fn same_value_is_shared_not_conflicting() {
        // Two managers applying the same value both own the field, without conflict.
        let a = apply(None, &cfg(3, json!([])), &applier("a", false, NOW)).expect("applies");
        let b = apply(Some(&a), &cfg(3, json!([])), &applier("b", false, NOW)).expect("applies");
        assert_eq!(managed::read(&b).len(), 2);
    }
}
