//! Defaults the real API server fills in for the built-in kinds Flotilla and the simulated
//! node rely on (Deployment strategy, Service port protocol and targetPort, container
//! pull policy, ...). Pure functions on JSON.

use serde_json::{json, Map, Value};

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    v.get_mut(key).and_then(Value::as_object_mut)
}

fn set_default(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.to_string(), v);
    }
}

fn pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "schedulerName", json!("default-scheduler"));
    set_default(s, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                let latest = !image.contains(':') || image.ends_with(":latest");
                let policy = if latest { "Always" } else { "IfNotPresent" };
                set_default(c, "imagePullPolicy", json!(policy));
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

fn template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        pod_spec(spec);
    }
}

/// Applies the server-side defaults of a built-in kind in place.
pub fn apply(group: &str, kind: &str, obj: &mut Value) {
    match (group, kind) {
        ("apps", "Deployment") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                set_default(
                    spec,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                );
                if let Some(st) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                    set_default(st, "type", json!("RollingUpdate"));
                    if st.get("type") == Some(&json!("RollingUpdate")) {
                        set_default(st, "rollingUpdate", json!({}));
                        if let Some(ru) = st.get_mut("rollingUpdate").and_then(Value::as_object_mut)
                        {
                            set_default(ru, "maxSurge", json!("25%"));
                            set_default(ru, "maxUnavailable", json!("25%"));
                        }
                    }
                }
            }
            template(obj);
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "replicas", json!(1));
            }
            template(obj);
        }
        ("", "Pod") => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec(spec);
            }
        }
        ("", "Service") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            if let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
        }
        ("", "Secret") => {
            if let Some(m) = obj.as_object_mut() {
                set_default(m, "type", json!("Opaque"));
                if let Some(Value::Object(string_data)) = m.remove("stringData") {
                    if !m.get("data").is_some_and(Value::is_object) {
                        m.insert("data".into(), json!({}));
                    }
                    if let Some(data) = m.get_mut("data").and_then(Value::as_object_mut) {
                        for (k, v) in string_data {
                            let text = v.as_str().unwrap_or("").as_bytes().to_vec();
                            data.insert(k, json!(base64(&text)));
                        }
                    }
                }
            }
        }
        ("", "Namespace") => {
            let name = obj
                .pointer("/metadata/name")
                .cloned()
                .unwrap_or(Value::Null);
            if let Some(meta) = obj_mut(obj, "metadata") {
                set_default(meta, "labels", json!({}));
                if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
                    labels.insert("kubernetes.io/metadata.name".into(), name);
                }
            }
            if let Some(m) = obj.as_object_mut() {
                set_default(m, "spec", json!({"finalizers": ["kubernetes"]}));
                set_default(m, "status", json!({"phase": "Active"}));
            }
        }
        _ => {}
    }
}

/// Standard base64 with padding (Secret `data` values).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_string_data_becomes_base64_data() {
        // stringData is folded into data, base64-encoded, as the real server does.
        let mut s = json!({"stringData": {"a": "hello", "b": "hi"}, "data": {"c": "eA=="}});
        apply("", "Secret", &mut s);
        assert_eq!(
            s["data"],
            json!({"a": "aGVsbG8=", "b": "aGk=", "c": "eA=="})
        );
        assert!(s.get("stringData").is_none());
        assert_eq!(base64(b"abc"), "YWJj");
    }

    use super::*;

    #[test]
    fn service_ports_get_protocol_and_target_port() {
        // A Service port without protocol/targetPort gets TCP and its own port number.
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply("", "Service", &mut s);
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["type"], "ClusterIP");
    }

    #[test]
    fn deployment_gets_rolling_update_strategy() {
        // The default strategy is RollingUpdate 25%/25%, as the controller expects.
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        apply("apps", "Deployment", &mut d);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }
}
