//! `events.k8s.io/v1` Events mirrored as `core/v1` Events, so Events written by controllers
//! through the newer API (kube-rs `Recorder`) show in `kubectl get events` and
//! `kubectl describe`, which read the core API. On a real cluster both APIs are views of the
//! same objects; kubesim keeps a read-only copy in the core resource. Pure conversion.

use serde_json::{json, Map, Value};

use crate::registry::ResKey;

pub fn is_events_v1(res: &ResKey) -> bool {
    res.group == "events.k8s.io" && res.plural == "events"
}

pub fn core_key() -> ResKey {
    ResKey {
        group: String::new(),
        plural: "events".into(),
    }
}

/// The core/v1 form of an events.k8s.io/v1 Event.
pub fn to_core(ev: &Value) -> Value {
    let get = |k: &str| ev.get(k).filter(|v| !v.is_null()).cloned();
    let mut meta = ev.get("metadata").cloned().unwrap_or(json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    out.insert("metadata".into(), meta);
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            out.insert(k.to_string(), v);
        }
    };
    put("involvedObject", get("regarding").or(Some(json!({}))));
    put("related", get("related"));
    put("reason", get("reason"));
    put("message", get("note"));
    put("type", get("type"));
    put("action", get("action"));
    put("eventTime", get("eventTime"));
    put("series", get("series"));
    put("reportingComponent", get("reportingController"));
    put("reportingInstance", get("reportingInstance"));
    let source = get("deprecatedSource").or_else(|| {
        get("reportingController").map(|c| {
            let mut s = json!({"component": c});
            if let Some(h) = get("reportingInstance") {
                s["host"] = h;
            }
            s
        })
    });
    put("source", source);
    let last = get("deprecatedLastTimestamp")
        .or_else(|| {
            ev.pointer("/series/lastObservedTime")
                .cloned()
                .map(truncate_micro)
        })
        .or_else(|| get("eventTime").map(truncate_micro));
    let first = get("deprecatedFirstTimestamp").or_else(|| get("eventTime").map(truncate_micro));
    put("firstTimestamp", first);
    put("lastTimestamp", last);
    let count = get("deprecatedCount")
        .or_else(|| ev.pointer("/series/count").cloned())
        .unwrap_or(json!(1));
    put("count", Some(count));
    Value::Object(out)
}

/// `2026-01-01T00:00:00.123456Z` → `2026-01-01T00:00:00Z` (core timestamps have seconds).
fn truncate_micro(v: Value) -> Value {
    match v.as_str() {
        Some(s) => match (s.find('.'), s.ends_with('Z')) {
            (Some(dot), true) => json!(format!("{}Z", &s[..dot])),
            _ => v,
        },
        None => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_v1_fields_map_to_core() {
        // regarding/note/reportingController become involvedObject/message/source.
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "n"},
            "regarding": {"kind": "MicroService", "name": "users"}, "note": "scaled", "reason": "Scaled",
            "type": "Normal", "reportingController": "flotilla", "reportingInstance": "pod-1",
            "eventTime": "2026-01-01T00:00:00.500000Z", "action": "Scale"});
        let core = to_core(&ev);
        assert_eq!(core["involvedObject"]["name"], "users");
        assert_eq!(core["message"], "scaled");
        assert_eq!(
            core["source"],
            json!({"component": "flotilla", "host": "pod-1"})
        );
        assert_eq!(core["lastTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(core["count"], 1);
        assert_eq!(core["apiVersion"], "v1");
    }
}
