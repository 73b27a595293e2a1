//! Strategic merge patch for built-in kinds: like a JSON merge patch, but lists with a merge
//! key (containers by name, ports by port, ...) merge item by item, and the `$patch`,
//! `$retainKeys`, `$deleteFromPrimitiveList` and `$setElementOrder` directives kubectl sends
//! are honoured. Pure functions.

use serde_json::{Map, Value};

use super::listtype::{ListType, Oracle};

/// Applies `patch` to `orig` in place.
pub fn apply(orig: &mut Value, patch: &Value, oracle: &Oracle) -> Result<(), String> {
    let mut path = Vec::new();
    merge_value(orig, patch, &mut path, oracle)
}

fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
        other => other.clone(),
    }
}

fn merge_value(
    orig: &mut Value,
    patch: &Value,
    path: &mut Vec<String>,
    oracle: &Oracle,
) -> Result<(), String> {
    match (orig.as_object_mut(), patch.as_object()) {
        (Some(o), Some(p)) => merge_map(o, p, path, oracle),
        _ => {
            *orig = strip(patch);
            Ok(())
        }
    }
}

fn merge_map(
    o: &mut Map<String, Value>,
    p: &Map<String, Value>,
    path: &mut Vec<String>,
    oracle: &Oracle,
) -> Result<(), String> {
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let Value::Object(m) = strip(&Value::Object(p.clone())) else {
                return Ok(());
            };
            *o = m;
            return Ok(());
        }
        Some("delete") => {
            o.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other:?}")),
    }
    if let Some(retain) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        o.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, pv) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (
                o.get_mut(field).and_then(Value::as_array_mut),
                pv.as_array(),
            ) {
                list.retain(|i| !del.contains(i));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            o.remove(k);
            continue;
        }
        path.push(k.clone());
        match (o.get_mut(k), pv) {
            (Some(ov @ Value::Object(_)), Value::Object(_)) => merge_value(ov, pv, path, oracle)?,
            (Some(Value::Array(ol)), Value::Array(pl)) => merge_list(ol, pl, path, oracle)?,
            _ => {
                o.insert(k.clone(), strip(pv));
            }
        }
        path.pop();
    }
    Ok(())
}

fn merge_list(
    orig: &mut Vec<Value>,
    patch: &[Value],
    path: &mut Vec<String>,
    oracle: &Oracle,
) -> Result<(), String> {
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *orig = patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip)
            .collect();
        return Ok(());
    }
    match oracle.list_type(path) {
        ListType::Set => {
            for item in patch {
                if !orig.contains(item) {
                    orig.push(item.clone());
                }
            }
        }
        ListType::Map(keys) => {
            let Some(key) = keys.first() else {
                *orig = patch.iter().map(strip).collect();
                return Ok(());
            };
            for item in patch {
                let kv = item.get(key);
                let pos = orig.iter().position(|o| o.get(key) == kv && kv.is_some());
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        orig.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => merge_value(&mut orig[i], item, path, oracle)?,
                    (None, false) => orig.push(strip(item)),
                }
            }
        }
        ListType::Atomic => *orig = patch.iter().map(strip).collect(),
    }
    Ok(())
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

    #[test]
    fn containers_merge_by_name() {
        // Patching one container's image keeps the other containers and fields.
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}}}});
        let p = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]}}}});
        apply(&mut d, &p, &oracle()).expect("patch applies");
        let cs = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(cs[0]["env"].as_array().map(Vec::len), Some(2));
        assert_eq!(cs[1]["name"], "b");
    }

    #[test]
    fn patch_delete_directive_removes_item() {
        // `$patch: delete` on a keyed item removes it; null removes a map key.
        let mut d = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}});
        let p = json!({"metadata": {"labels": {"a": null}},
            "spec": {"template": {"spec": {"containers": [{"name": "a", "$patch": "delete"}],
            "$setElementOrder/containers": [{"name": "b"}]}}}});
        apply(&mut d, &p, &oracle()).expect("patch applies");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b"}])
        );
        assert_eq!(d["metadata"]["labels"], json!({"b": "2"}));
    }

    #[test]
    fn finalizers_merge_as_a_set() {
        // Finalizers have patch strategy merge: a patch adds without dropping others.
        let mut d = json!({"metadata": {"finalizers": ["a"]}});
        apply(
            &mut d,
            &json!({"metadata": {"finalizers": ["b"]}}),
            &oracle(),
        )
        .expect("patch applies");
        assert_eq!(d["metadata"]["finalizers"], json!(["a", "b"]));
    }
}
