//! `meta.k8s.io/v1` Table output for `kubectl get`: name and age for built-ins (plus the
//! familiar columns for pods, deployments, services, ...), and the CRD's
//! `additionalPrinterColumns` evaluated by a small JSONPath subset for custom resources.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::registry::{PrinterColumn, ResourceDef};

fn col(
    name: &str,
    type_: &str,
    format: &str,
    description: &str,
    priority: i64,
    json_path: &str,
) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        format: format.into(),
        description: description.into(),
        priority,
        json_path: json_path.into(),
    }
}

const AGE: &str =
    "CreationTimestamp is a timestamp representing the server time when this object was created.";

/// Columns after NAME for a resource (the last is usually AGE).
fn columns(def: &ResourceDef, version: &str) -> Vec<PrinterColumn> {
    if def.is_custom() {
        return match def.printer_columns.get(version) {
            Some(cols) if !cols.is_empty() => cols.clone(),
            _ => vec![col(
                "Age",
                "date",
                "",
                AGE,
                0,
                ".metadata.creationTimestamp",
            )],
        };
    }
    let age = col("Age", "string", "", AGE, 0, ".metadata.creationTimestamp");
    let mut cols = match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => vec![
            col("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0, "@ready"),
            col("Status", "string", "", "The aggregate status of the containers in this pod.", 0, "@podstatus"),
            col("Restarts", "string", "", "The number of times the containers in this pod have been restarted.", 0, "@restarts"),
        ],
        ("apps", "deployments") => vec![
            col("Ready", "string", "", "Number of the pod with ready state", 0, "@deployready"),
            col("Up-to-date", "string", "", "Total number of non-terminated pods targeted by this deployment that have the desired template spec.", 0, "@int.status.updatedReplicas"),
            col("Available", "string", "", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.", 0, "@int.status.availableReplicas"),
        ],
        ("apps", "replicasets") => vec![
            col("Desired", "integer", "", "Number of desired pods.", 0, ".spec.replicas"),
            col("Current", "integer", "", "Number of actual replicas.", 0, "@int.status.replicas"),
            col("Ready", "integer", "", "Number of ready replicas.", 0, "@int.status.readyReplicas"),
        ],
        ("", "services") => vec![
            col("Type", "string", "", "The type of the service.", 0, ".spec.type"),
            col("Cluster-IP", "string", "", "The cluster IP of the service.", 0, ".spec.clusterIP"),
            col("Port(s)", "string", "", "The ports of the service.", 0, "@ports"),
        ],
        ("", "namespaces") => vec![col("Status", "string", "", "The status of the namespace", 0, ".status.phase")],
        ("", "events") => {
            return vec![
                col("Last Seen", "string", "", "Time since the event was last seen.", 0, "@lastseen"),
                col("Type", "string", "", "Type of this event.", 0, ".type"),
                col("Reason", "string", "", "Reason why this event was generated.", 0, ".reason"),
                col("Object", "string", "", "The object this event is about.", 0, "@object"),
                col("Message", "string", "", "A human-readable description of the event.", 0, ".message"),
            ]
        }
        _ => Vec::new(),
    };
    cols.push(age);
    // `-o wide` columns (priority 1), after AGE as kubectl shows them.
    let wide = |name: &str, desc: &str, path: &str| col(name, "string", "", desc, 1, path);
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => {
            cols.push(wide(
                "IP",
                "IP address allocated to the pod.",
                ".status.podIP",
            ));
            cols.push(wide(
                "Node",
                "Name of the node the pod is assigned to.",
                ".spec.nodeName",
            ));
        }
        ("apps", "deployments") | ("apps", "replicasets") => {
            cols.push(wide(
                "Containers",
                "Names of each container in the template.",
                "@containers",
            ));
            cols.push(wide(
                "Images",
                "Images referenced by each container in the template.",
                "@images",
            ));
            cols.push(wide("Selector", "Label selector for pods.", "@selector"));
        }
        ("", "services") => {
            cols.push(wide(
                "Selector",
                "Route service traffic to pods with label keys and values matching this selector.",
                "@svcselector",
            ));
        }
        _ => {}
    }
    cols
}

/// Builds a Table of `objects`. `include_object` is the `includeObject` query parameter
/// (`None`, `Metadata` (default) or `Object`).
pub fn table(
    def: &ResourceDef,
    version: &str,
    objects: &[Arc<Value>],
    rv: &str,
    include_object: Option<&str>,
) -> Value {
    let cols = columns(def, version);
    // Events list by time and object; their (generated) names only show with `-o wide`.
    let name_priority = if def.group.is_empty() && def.plural == "events" {
        1
    } else {
        0
    };
    let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": name_priority})];
    for c in &cols {
        defs.push(json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority}));
    }
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            for c in &cols {
                cells.push(cell(o, c, now));
            }
            let object = match include_object {
                Some("None") => Value::Null,
                Some("Object") => {
                    let mut v = (**o).clone();
                    v["apiVersion"] = json!(def.api_version(version));
                    v
                }
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({}))}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

fn cell(o: &Value, c: &PrinterColumn, now: jiff::Timestamp) -> Value {
    let special = |p: &str| o.pointer(p).cloned();
    let v = match c.json_path.as_str() {
        "@ready" => {
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses.map_or(0, |s| {
                s.iter().filter(|c| c["ready"] == json!(true)).count()
            });
            Some(json!(format!("{ready}/{total}")))
        }
        "@podstatus" => {
            let waiting = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .and_then(|s| {
                    s.iter()
                        .find_map(|c| c.pointer("/state/waiting/reason").cloned())
                });
            if o.pointer("/metadata/deletionTimestamp").is_some() {
                Some(json!("Terminating"))
            } else {
                waiting
                    .or_else(|| special("/status/reason"))
                    .or_else(|| special("/status/phase"))
            }
        }
        "@containers" | "@images" => {
            let field = if c.json_path == "@containers" {
                "name"
            } else {
                "image"
            };
            let list = o
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array);
            let names: Vec<&str> = list
                .map(|cs| cs.iter().filter_map(|c| c[field].as_str()).collect())
                .unwrap_or_default();
            Some(json!(names.join(",")))
        }
        "@selector" => o
            .pointer("/spec/selector")
            .map(|s| json!(crate::selectors::LabelSelector::from_object(s).to_query())),
        "@svcselector" => {
            let sel = o.pointer("/spec/selector").and_then(Value::as_object);
            let parts: Vec<String> = sel
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            Some(json!(if parts.is_empty() {
                "<none>".to_string()
            } else {
                parts.join(",")
            }))
        }
        "@lastseen" => {
            let ts = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| o.pointer(p).and_then(Value::as_str));
            ts.map(|t| json!(age(t, now)))
        }
        "@object" => {
            let kind = o
                .pointer("/involvedObject/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = o
                .pointer("/involvedObject/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            Some(json!(format!("{}/{name}", kind.to_lowercase())))
        }
        "@restarts" => {
            let n: i64 = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .map_or(0, |s| {
                    s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
                });
            Some(json!(n.to_string()))
        }
        "@deployready" => {
            let ready = o
                .pointer("/status/readyReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let want = o
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            Some(json!(format!("{ready}/{want}")))
        }
        "@ports" => {
            let ports = o.pointer("/spec/ports").and_then(Value::as_array);
            let s: Vec<String> = ports
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(json!(if s.is_empty() {
                "<none>".to_string()
            } else {
                s.join(",")
            }))
        }
        path if path.starts_with("@int.") => {
            let found = jsonpath(o, &path[4..]);
            Some(found.into_iter().next().unwrap_or(json!(0)))
        }
        path => {
            let found = jsonpath(o, path);
            if found.is_empty() {
                None
            } else if found.len() == 1 {
                Some(found[0].clone())
            } else {
                Some(json!(found
                    .iter()
                    .map(scalar_text)
                    .collect::<Vec<_>>()
                    .join(",")))
            }
        }
    };
    match (c.type_.as_str(), c.name.as_str(), v) {
        (_, "Age", Some(Value::String(ts))) | ("date", _, Some(Value::String(ts))) => {
            json!(age(&ts, now))
        }
        (_, _, Some(v)) => v,
        (_, _, None) => Value::Null,
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The age of a timestamp the way kubectl prints it (`45s`, `3m12s`, `5h`, `2d`).
pub fn age(ts: &str, now: jiff::Timestamp) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (now.as_second() - t.as_second()).max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `[n]`, `[*]` and
/// `[?(@.field=="value")]`.
pub fn jsonpath(obj: &Value, path: &str) -> Vec<Value> {
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    let mut cur: Vec<&Value> = vec![obj];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            cur = cur.iter().filter_map(|v| v.get(field)).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Vec::new();
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            if inner == "*" {
                cur = cur
                    .iter()
                    .flat_map(|v| v.as_array().into_iter().flatten())
                    .collect();
            } else if let Ok(i) = inner.parse::<usize>() {
                cur = cur.iter().filter_map(|v| v.get(i)).collect();
            } else if let Some(f) = inner.strip_prefix("?(@.").and_then(|x| x.strip_suffix(')')) {
                let Some((field, want)) = f.split_once("==") else {
                    return Vec::new();
                };
                let want = want.trim().trim_matches(['"', '\'']);
                cur = cur
                    .iter()
                    .flat_map(|v| v.as_array().into_iter().flatten())
                    .filter(|item| {
                        item.pointer(&format!("/{}", field.trim().replace('.', "/")))
                            .is_some_and(|x| scalar_text(x) == want)
                    })
                    .collect();
            } else {
                return Vec::new();
            }
        } else {
            return Vec::new();
        }
    }
    cur.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_filters_conditions() {
        // Printer columns can select a condition by type.
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![json!("True")]
        );
        assert_eq!(jsonpath(&o, ".status.conditions[0].type"), vec![json!("A")]);
        assert!(jsonpath(&o, ".spec.missing").is_empty());
    }

    #[test]
    fn ages_read_like_kubectl() {
        // Ages use kubectl's compact units.
        let now: jiff::Timestamp = "2026-01-01T10:00:00Z".parse().expect("valid");
        assert_eq!(age("2026-01-01T09:59:15Z", now), "45s");
        assert_eq!(age("2026-01-01T09:56:48Z", now), "3m12s");
        assert_eq!(age("2026-01-01T05:00:00Z", now), "5h");
    }
}
