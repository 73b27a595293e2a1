//! Which lists are merged by key, which are sets and which are atomic: the schema
//! knowledge that strategic merge patch and server-side apply need. Built-ins use the merge
//! keys of the Kubernetes API types Flotilla and kubectl touch; custom resources use
//! `x-kubernetes-list-type` / `x-kubernetes-list-map-keys` from their schema.

use serde_json::Value;

/// How a list field merges.
#[derive(Debug, Clone, PartialEq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// Items are identified by these key fields.
    Map(Vec<String>),
    /// Items are scalars identified by value.
    Set,
}

/// The schema of the object being patched: built-in rules or a CRD's structural schema.
#[derive(Debug, Clone, Copy)]
pub struct Oracle<'a> {
    /// The plural of the built-in resource (selects e.g. Service port keys) or `None`.
    pub builtin: Option<(&'a str, &'a str)>,
    pub schema: Option<&'a Value>,
}

fn keys(k: &[&str]) -> ListType {
    ListType::Map(k.iter().map(|s| s.to_string()).collect())
}

impl<'a> Oracle<'a> {
    /// The list type of the field at `path` (field names from the object root; list items
    /// are not part of the path).
    pub fn list_type(&self, path: &[String]) -> ListType {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        match p.as_slice() {
            ["metadata", "finalizers"] => return ListType::Set,
            ["metadata", "ownerReferences"] => return keys(&["uid"]),
            ["metadata", ..] => return ListType::Atomic,
            _ => {}
        }
        if let Some(schema) = self.schema {
            return schema_list_type(schema, &p);
        }
        let last = p.last().copied().unwrap_or("");
        let parent = if p.len() >= 2 { p[p.len() - 2] } else { "" };
        let container_list = matches!(
            parent,
            "containers" | "initContainers" | "ephemeralContainers"
        );
        match last {
            "containers" | "initContainers" | "ephemeralContainers" => keys(&["name"]),
            "env" if container_list => keys(&["name"]),
            "ports" if container_list => keys(&["containerPort", "protocol"]),
            "ports"
                if p == ["spec", "ports"] && self.builtin.is_some_and(|b| b.1 == "services") =>
            {
                keys(&["port", "protocol"])
            }
            "volumeMounts" => keys(&["mountPath"]),
            "volumeDevices" => keys(&["devicePath"]),
            "volumes" | "imagePullSecrets" => keys(&["name"]),
            "hostAliases" => keys(&["ip"]),
            "topologySpreadConstraints" => keys(&["topologyKey", "whenUnsatisfiable"]),
            "conditions" if parent == "status" => keys(&["type"]),
            _ => ListType::Atomic,
        }
    }

    /// The single merge key strategic merge patch uses for a list (`None`: replace).
    pub fn merge_key(&self, path: &[String]) -> Option<String> {
        match self.list_type(path) {
            ListType::Map(k) => k.into_iter().next(),
            _ => None,
        }
    }
}

fn schema_list_type(schema: &Value, path: &[&str]) -> ListType {
    let mut cur = schema;
    for (i, field) in path.iter().enumerate() {
        let next = cur
            .get("properties")
            .and_then(|p| p.get(*field))
            .or_else(|| cur.get("additionalProperties").filter(|a| a.is_object()));
        let Some(next) = next else {
            return ListType::Atomic;
        };
        cur = next;
        if i + 1 < path.len() {
            if let Some(items) = cur.get("items") {
                cur = items;
            }
        }
    }
    match cur.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("map") => ListType::Map(
            cur.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        Some("set") => ListType::Set,
        _ => ListType::Atomic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn builtin_container_lists_merge_by_name() {
        // Containers and their env merge by name; container ports by port and protocol.
        let o = Oracle {
            builtin: Some(("apps", "deployments")),
            schema: None,
        };
        assert_eq!(
            o.list_type(&path(&["spec", "template", "spec", "containers"])),
            keys(&["name"])
        );
        assert_eq!(
            o.list_type(&path(&["spec", "template", "spec", "containers", "ports"])),
            keys(&["containerPort", "protocol"])
        );
        assert_eq!(
            o.list_type(&path(&["spec", "template", "spec", "containers", "args"])),
            ListType::Atomic
        );
    }

    #[test]
    fn crd_schema_list_map_keys() {
        // A CRD list declared as a map uses its declared keys.
        let schema = json!({"properties": {"spec": {"properties": {"routes": {
            "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["path"],
            "items": {"type": "object", "properties": {"tags": {"type": "array", "x-kubernetes-list-type": "set"}}}}}}}});
        let o = Oracle {
            builtin: None,
            schema: Some(&schema),
        };
        assert_eq!(o.list_type(&path(&["spec", "routes"])), keys(&["path"]));
        assert_eq!(
            o.list_type(&path(&["spec", "routes", "tags"])),
            ListType::Set
        );
    }
}
