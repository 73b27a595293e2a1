//! Field sets in the `FieldsV1` form of `metadata.managedFields`: a JSON tree whose keys are
//! path elements (`f:<field>`, `k:<key json>` for keyed list items, `v:<value json>` for set
//! items) and where `"."` (or an empty node) marks a node owned as a whole.
//!
//! These are the set operations server-side apply is built from. Pure functions.

use serde_json::{Map, Value};

use super::listtype::{ListType, Oracle};

pub type FieldSet = Map<String, Value>;

/// Metadata fields a manager can own; everything else in metadata is server-controlled.
const OWNED_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// Key fields that take a default when an item omits them (a port's protocol).
fn key_default(key: &str) -> Option<Value> {
    (key == "protocol").then(|| Value::String("TCP".into()))
}

/// The `k:` element of a keyed list item.
pub fn item_key(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        match item.get(k).cloned().or_else(|| key_default(k)) {
            Some(v) => {
                m.insert(k.clone(), v);
            }
            None => continue,
        }
    }
    format!("k:{}", Value::Object(m))
}

fn owns_self(node: &Value) -> bool {
    match node.as_object() {
        Some(m) => m.is_empty() || m.contains_key("."),
        None => true,
    }
}

fn children(node: &Value) -> impl Iterator<Item = (&String, &Value)> {
    node.as_object()
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(|(k, _)| k.as_str() != ".")
}

fn make_node(self_owned: bool, kids: FieldSet) -> Option<Value> {
    match (self_owned, kids.is_empty()) {
        (true, true) => Some(Value::Object(Map::new())),
        (false, true) => None,
        (true, false) => {
            let mut m = kids;
            m.insert(".".into(), Value::Object(Map::new()));
            Some(Value::Object(m))
        }
        (false, false) => Some(Value::Object(kids)),
    }
}

/// The fields set in `obj` (the whole object, from its root). `scope` limits the result to
/// the main resource (`Some(false)`: everything but `status`) or the status (`Some(true)`).
pub fn of_object(obj: &Value, oracle: &Oracle, status_scope: Option<bool>) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(m) = obj.as_object() else {
        return out;
    };
    let mut path = Vec::new();
    for (k, child) in m {
        match k.as_str() {
            "apiVersion" | "kind" => continue,
            "status" if status_scope == Some(false) => continue,
            "metadata" => {
                if status_scope == Some(true) {
                    continue;
                }
                let mut meta = FieldSet::new();
                if let Some(mm) = child.as_object() {
                    for f in OWNED_METADATA {
                        if let Some(v) = mm.get(*f) {
                            if v.is_null() {
                                continue;
                            }
                            path.push("metadata".to_string());
                            path.push(f.to_string());
                            meta.insert(format!("f:{f}"), node_of(v, &mut path, oracle));
                            path.pop();
                            path.pop();
                        }
                    }
                }
                if !meta.is_empty() {
                    out.insert("f:metadata".into(), Value::Object(meta));
                }
                continue;
            }
            _ if status_scope == Some(true) && k != "status" => continue,
            _ => {}
        }
        if child.is_null() {
            continue;
        }
        path.push(k.clone());
        out.insert(format!("f:{k}"), node_of(child, &mut path, oracle));
        path.pop();
    }
    out
}

fn node_of(v: &Value, path: &mut Vec<String>, oracle: &Oracle) -> Value {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut node = FieldSet::new();
            for (k, child) in m {
                if child.is_null() {
                    continue;
                }
                path.push(k.clone());
                node.insert(format!("f:{k}"), node_of(child, path, oracle));
                path.pop();
            }
            Value::Object(node)
        }
        Value::Array(items) => match oracle.list_type(path) {
            ListType::Map(keys) => {
                let mut node = FieldSet::new();
                for item in items {
                    let mut inode = match node_of(item, path, oracle) {
                        Value::Object(m) => m,
                        _ => FieldSet::new(),
                    };
                    inode.insert(".".into(), Value::Object(Map::new()));
                    node.insert(item_key(item, &keys), Value::Object(inode));
                }
                Value::Object(node)
            }
            ListType::Set => {
                let mut node = FieldSet::new();
                for item in items {
                    node.insert(format!("v:{item}"), Value::Object(Map::new()));
                }
                Value::Object(node)
            }
            ListType::Atomic => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    }
}

pub fn union(a: &FieldSet, b: &FieldSet) -> FieldSet {
    let mut out = a.clone();
    for (k, bv) in b {
        let merged = match out.get(k) {
            Some(av) => {
                let kids = union(&kids_of(av), &kids_of(bv));
                make_node(owns_self(av) || owns_self(bv), kids)
            }
            None => Some(bv.clone()),
        };
        if let Some(n) = merged {
            out.insert(k.clone(), n);
        }
    }
    out
}

fn kids_of(node: &Value) -> FieldSet {
    children(node)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Fields in `a` not in `b`.
pub fn difference(a: &FieldSet, b: &FieldSet) -> FieldSet {
    let mut out = FieldSet::new();
    for (k, av) in a {
        match b.get(k) {
            None => {
                out.insert(k.clone(), av.clone());
            }
            Some(bv) => {
                let self_owned = owns_self(av) && !owns_self(bv);
                let kids = difference(&kids_of(av), &kids_of(bv));
                if let Some(n) = make_node(self_owned, kids) {
                    out.insert(k.clone(), n);
                }
            }
        }
    }
    out
}

/// Fields in both `a` and `b`.
pub fn intersection(a: &FieldSet, b: &FieldSet) -> FieldSet {
    let mut out = FieldSet::new();
    for (k, av) in a {
        if let Some(bv) = b.get(k) {
            let self_owned = owns_self(av) && owns_self(bv);
            let kids = intersection(&kids_of(av), &kids_of(bv));
            if let Some(n) = make_node(self_owned, kids) {
                out.insert(k.clone(), n);
            }
        }
    }
    out
}

/// Paths of the leaves of a set that stand for a value (empty nodes), skipping nodes that
/// only mark a list item's existence (`"."`).
pub fn value_leaves(set: &FieldSet) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    walk_leaves(set, &mut path, &mut out);
    out
}

fn walk_leaves(set: &FieldSet, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (k, v) in set {
        if k == "." {
            continue;
        }
        path.push(k.clone());
        match v.as_object() {
            Some(m) if m.is_empty() => out.push(path.clone()),
            Some(m) => walk_leaves(m, path, out),
            None => out.push(path.clone()),
        }
        path.pop();
    }
}

/// Looks up the value at a path of elements; `k:`/`v:` elements select list items.
pub fn get_path<'v>(obj: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = obj;
    for pe in path {
        cur = step(cur, pe)?;
    }
    Some(cur)
}

fn item_matches(item: &Value, key_json: &str) -> bool {
    let Ok(Value::Object(want)) = serde_json::from_str::<Value>(key_json) else {
        return false;
    };
    want.iter().all(|(k, v)| match item.get(k) {
        Some(got) => got == v,
        None => key_default(k).as_ref() == Some(v),
    })
}

fn step<'v>(cur: &'v Value, pe: &str) -> Option<&'v Value> {
    if let Some(f) = pe.strip_prefix("f:") {
        cur.get(f)
    } else if let Some(k) = pe.strip_prefix("k:") {
        cur.as_array()?.iter().find(|i| item_matches(i, k))
    } else if let Some(v) = pe.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        cur.as_array()?.iter().find(|i| **i == want)
    } else {
        None
    }
}

/// Removes from `obj` every field a set owns as a whole; descends into partly owned nodes.
pub fn remove(obj: &mut Value, set: &FieldSet) {
    for (pe, node) in set {
        if pe == "." {
            continue;
        }
        if owns_self(node) {
            remove_element(obj, pe);
        } else if let Some(child) = step_mut(obj, pe) {
            let was_empty = child.as_object().is_some_and(Map::is_empty);
            remove(child, &kids_of(node));
            // A struct whose every field was dropped goes too, so that removing a whole
            // section from the applied configuration (e.g. `spec.autoscaling`) removes it
            // rather than leaving `{}` behind for defaulting to refill.
            if !was_empty && child.as_object().is_some_and(Map::is_empty) && pe.starts_with("f:") {
                remove_element(obj, pe);
            }
        }
    }
}

fn remove_element(obj: &mut Value, pe: &str) {
    if let Some(f) = pe.strip_prefix("f:") {
        if let Some(m) = obj.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = pe.strip_prefix("k:") {
        if let Some(a) = obj.as_array_mut() {
            a.retain(|i| !item_matches(i, k));
        }
    } else if let Some(v) = pe.strip_prefix("v:") {
        if let (Some(a), Ok(want)) = (obj.as_array_mut(), serde_json::from_str::<Value>(v)) {
            a.retain(|i| *i != want);
        }
    }
}

fn step_mut<'v>(cur: &'v mut Value, pe: &str) -> Option<&'v mut Value> {
    if let Some(f) = pe.strip_prefix("f:") {
        cur.get_mut(f)
    } else if let Some(k) = pe.strip_prefix("k:") {
        cur.as_array_mut()?.iter_mut().find(|i| item_matches(i, k))
    } else if let Some(v) = pe.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        cur.as_array_mut()?.iter_mut().find(|i| **i == want)
    } else {
        None
    }
}

/// A path as the real server prints it in conflicts: `.spec.containers[name="app"].image`.
pub fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(k) {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
        } else if let Some(v) = pe.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// Fields whose value differs between `old` and `new` (new or changed leaves, and keyed
/// list items that appeared), within a scope as in [`of_object`].
pub fn changed(old: &Value, new: &Value, oracle: &Oracle, status_scope: Option<bool>) -> FieldSet {
    let all = of_object(new, oracle, status_scope);
    let mut out = FieldSet::new();
    let mut path = Vec::new();
    collect_changed(&all, old, new, &mut path, &mut out);
    out
}

fn collect_changed(
    set: &FieldSet,
    old: &Value,
    new: &Value,
    path: &mut Vec<String>,
    out: &mut FieldSet,
) {
    for (pe, node) in set {
        if pe == "." {
            continue;
        }
        path.push(pe.clone());
        let o = get_path(old, path);
        let is_leaf = node.as_object().is_none_or(Map::is_empty);
        if is_leaf {
            if o != get_path(new, path) {
                insert_path(out, path, true);
            }
        } else {
            if node.get(".").is_some() && o.is_none() {
                insert_path(out, path, true);
            }
            if let Some(m) = node.as_object() {
                collect_changed(m, old, new, path, out);
            }
        }
        path.pop();
    }
}

fn insert_path(set: &mut FieldSet, path: &[String], self_owned: bool) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let existed = set.contains_key(first);
    let entry = set
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = entry.as_object_mut() {
        if rest.is_empty() {
            if self_owned && !m.is_empty() {
                m.insert(".".into(), Value::Object(Map::new()));
            }
        } else {
            let was_leaf = existed && m.is_empty();
            insert_path(m, rest, self_owned);
            if was_leaf {
                m.insert(".".into(), Value::Object(Map::new()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn oracle() -> Oracle<'static> {
        Oracle {
            builtin: Some(("apps", "deployments")),
            schema: None,
        }
    }

    fn dep(image: &str, replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"a": "1"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})
    }

    #[test]
    fn fields_use_keyed_elements_for_containers() {
        // Container items are identified by their name key and own themselves with ".".
        let f = of_object(&dep("x", 1), &oracle(), Some(false));
        let c = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"];
        assert!(c.get(".").is_some());
        assert!(c.get("f:image").is_some());
        assert!(f["f:metadata"].get("f:name").is_none());
    }

    #[test]
    fn difference_and_intersection_are_consistent() {
        // a = (a - b) ∪ (a ∩ b) for field sets.
        let a = of_object(&dep("x", 1), &oracle(), None);
        let b = of_object(&json!({"spec": {"replicas": 2}}), &oracle(), None);
        let both = intersection(&a, &b);
        assert_eq!(
            value_leaves(&both),
            vec![vec!["f:spec".to_string(), "f:replicas".to_string()]]
        );
        assert_eq!(union(&difference(&a, &b), &both), a);
    }

    #[test]
    fn changed_reports_only_modified_leaves() {
        // An update owns only what it changed.
        let c = changed(&dep("x", 1), &dep("y", 1), &oracle(), None);
        let leaves = value_leaves(&c);
        assert_eq!(leaves.len(), 1);
        assert_eq!(
            display_path(&leaves[0]),
            ".spec.template.spec.containers[name=\"app\"].image"
        );
    }

    #[test]
    fn remove_drops_owned_list_items() {
        // Removing an owned keyed item drops it from the list.
        let mut d = dep("x", 1);
        let mut set = FieldSet::new();
        insert_path(
            &mut set,
            &[
                "f:spec",
                "f:template",
                "f:spec",
                "f:containers",
                "k:{\"name\":\"app\"}",
            ]
            .map(String::from),
            true,
        );
        remove(&mut d, &set);
        assert_eq!(d["spec"]["template"]["spec"]["containers"], json!([]));
    }
}
