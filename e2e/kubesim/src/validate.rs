//! The real API server's key validations for the kinds Flotilla writes: object names, label
//! and annotation syntax, required fields, a Deployment's selector matching its template,
//! Service ports, EndpointSlice address types. Pure functions returning field causes.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::selectors::LabelSelector;
use crate::status::Cause;

const DNS1123_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const QUALIFIED_NAME: &str = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$";
const LABEL_VALUE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

static SUBDOMAIN_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(DNS1123_SUBDOMAIN).ok());
static LABEL_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(DNS1123_LABEL).ok());
static QNAME_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(QUALIFIED_NAME).ok());
static LVALUE_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(LABEL_VALUE).ok());

fn is(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

/// Errors for a DNS-1123 subdomain (most object names).
pub fn subdomain_errors(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 characters".to_string());
    }
    if !is(&SUBDOMAIN_RE, s) {
        out.push(format!("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{}')", &DNS1123_SUBDOMAIN[1..DNS1123_SUBDOMAIN.len() - 1]));
    }
    out
}

/// Errors for a DNS-1123 label (namespace and Service names).
pub fn label_name_errors(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !is(&LABEL_RE, s) {
        out.push(format!("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{}')", &DNS1123_LABEL[1..DNS1123_LABEL.len() - 1]));
    }
    out
}

/// Errors for a label or annotation key (`[prefix/]name`).
pub fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            out.push("prefix part must be non-empty".to_string());
        } else {
            for e in subdomain_errors(p) {
                out.push(format!("prefix part {e}"));
            }
        }
    }
    if name.is_empty() {
        out.push("name part must be non-empty".to_string());
    } else {
        if name.len() > 63 {
            out.push("name part must be no more than 63 characters".to_string());
        }
        if !is(&QNAME_RE, name) {
            out.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string());
        }
    }
    out
}

pub fn label_value_errors(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    if v.len() > 63 {
        out.push("must be no more than 63 characters".to_string());
    }
    if !is(&LVALUE_RE, v) {
        out.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string());
    }
    out
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// Validates labels at `field` (e.g. `metadata.labels`).
pub fn labels(obj: &Value, ptr: &str, field: &str, causes: &mut Vec<Cause>) {
    let Some(map) = obj.pointer(ptr).and_then(Value::as_object) else {
        return;
    };
    for (k, v) in map {
        for e in qualified_name_errors(k) {
            causes.push(Cause::invalid(field, &Value::String(k.clone()), &e));
        }
        let s = v.as_str().unwrap_or("");
        for e in label_value_errors(s) {
            causes.push(Cause::invalid(field, &Value::String(s.to_string()), &e));
        }
    }
}

/// Object metadata checks common to every kind.
pub fn metadata(obj: &Value, name_is_label: bool, causes: &mut Vec<Cause>) {
    let name = str_at(obj, "/metadata/name").unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else {
        let errs = if name_is_label {
            label_name_errors(name)
        } else {
            subdomain_errors(name)
        };
        for e in errs {
            causes.push(Cause::invalid(
                "metadata.name",
                &Value::String(name.into()),
                &e,
            ));
        }
    }
    labels(obj, "/metadata/labels", "metadata.labels", causes);
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        for k in ann.keys() {
            for e in qualified_name_errors(k) {
                causes.push(Cause::invalid(
                    "metadata.annotations",
                    &Value::String(k.clone()),
                    &e,
                ));
            }
        }
        if total > 256 * 1024 {
            causes.push(Cause::new(
                "FieldValueTooLong",
                "Too long: must have at most 262144 bytes",
                "metadata.annotations",
            ));
        }
    }
}

fn containers(spec: &Value, field: &str, causes: &mut Vec<Cause>) {
    let list = spec.get("containers").and_then(Value::as_array);
    match list {
        None => causes.push(Cause::required(format!("{field}.containers"))),
        Some(l) if l.is_empty() => causes.push(Cause::required(format!("{field}.containers"))),
        Some(l) => {
            let mut seen = BTreeSet::new();
            for (i, c) in l.iter().enumerate() {
                let f = format!("{field}.containers[{i}]");
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                if name.is_empty() {
                    causes.push(Cause::required(format!("{f}.name")));
                } else {
                    for e in label_name_errors(name) {
                        causes.push(Cause::invalid(
                            format!("{f}.name"),
                            &Value::String(name.into()),
                            &e,
                        ));
                    }
                    if !seen.insert(name.to_string()) {
                        causes.push(Cause::duplicate(
                            format!("{f}.name"),
                            &Value::String(name.into()),
                        ));
                    }
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
                {
                    causes.push(Cause::required(format!("{f}.image")));
                }
                if let Some(ports) = c.get("ports").and_then(Value::as_array) {
                    for (j, p) in ports.iter().enumerate() {
                        let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                        if !(1..=65535).contains(&port) {
                            causes.push(Cause::invalid(
                                format!("{f}.ports[{j}].containerPort"),
                                &Value::from(port),
                                "must be between 1 and 65535, inclusive",
                            ));
                        }
                    }
                }
            }
        }
    }
}

fn deployment_like(obj: &Value, causes: &mut Vec<Cause>) {
    let sel = obj.pointer("/spec/selector");
    match sel {
        None | Some(Value::Null) => causes.push(Cause::required("spec.selector")),
        Some(sel) => {
            let selector = LabelSelector::from_object(sel);
            let template_labels = obj
                .pointer("/spec/template/metadata/labels")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            let probe = serde_json::json!({"metadata": {"labels": template_labels}});
            if selector.is_empty() {
                causes.push(Cause::invalid(
                    "spec.selector",
                    sel,
                    "empty selector is invalid for deployment",
                ));
            } else if !selector.matches(&probe) {
                causes.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    &template_labels,
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    labels(
        obj,
        "/spec/template/metadata/labels",
        "spec.template.metadata.labels",
        causes,
    );
    if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64) {
        if r < 0 {
            causes.push(Cause::invalid(
                "spec.replicas",
                &Value::from(r),
                "must be greater than or equal to 0",
            ));
        }
    }
    match obj.pointer("/spec/template/spec") {
        Some(s) => containers(s, "spec.template.spec", causes),
        None => causes.push(Cause::required("spec.template.spec.containers")),
    }
}

fn service(obj: &Value, causes: &mut Vec<Cause>) {
    let type_ = str_at(obj, "/spec/type").unwrap_or("ClusterIP");
    let allowed = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !allowed.contains(&type_) {
        causes.push(Cause::not_supported(
            "spec.type",
            &Value::String(type_.into()),
            &allowed.map(String::from),
        ));
    }
    let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
    let headless = str_at(obj, "/spec/clusterIP") == Some("None");
    match ports {
        None if type_ != "ExternalName" && !headless => causes.push(Cause::required("spec.ports")),
        Some(l) if l.is_empty() && type_ != "ExternalName" && !headless => {
            causes.push(Cause::required("spec.ports"))
        }
        Some(l) => {
            let mut names = BTreeSet::new();
            for (i, p) in l.iter().enumerate() {
                let f = format!("spec.ports[{i}]");
                let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                if l.len() > 1 && name.is_empty() {
                    causes.push(Cause::required(format!("{f}.name")));
                }
                if !name.is_empty() && !names.insert(name.to_string()) {
                    causes.push(Cause::duplicate(
                        format!("{f}.name"),
                        &Value::String(name.into()),
                    ));
                }
                let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(Cause::invalid(
                        format!("{f}.port"),
                        &Value::from(port),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if let Some(tp) = p.get("targetPort").and_then(Value::as_i64) {
                    if !(1..=65535).contains(&tp) {
                        causes.push(Cause::invalid(
                            format!("{f}.targetPort"),
                            &Value::from(tp),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                }
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                if !["TCP", "UDP", "SCTP"].contains(&proto) {
                    causes.push(Cause::not_supported(
                        format!("{f}.protocol"),
                        &Value::String(proto.into()),
                        &["SCTP".into(), "TCP".into(), "UDP".into()],
                    ));
                }
            }
        }
        None => {}
    }
    labels(obj, "/spec/selector", "spec.selector", causes);
}

fn endpoint_slice(obj: &Value, causes: &mut Vec<Cause>) {
    let allowed = ["IPv4", "IPv6", "FQDN"];
    match obj.get("addressType").and_then(Value::as_str) {
        None => causes.push(Cause::required("addressType")),
        Some(t) if !allowed.contains(&t) => causes.push(Cause::not_supported(
            "addressType",
            &Value::String(t.into()),
            &allowed.map(String::from),
        )),
        Some(t) => {
            if let Some(eps) = obj.get("endpoints").and_then(Value::as_array) {
                for (i, ep) in eps.iter().enumerate() {
                    let addrs = ep.get("addresses").and_then(Value::as_array);
                    let Some(addrs) = addrs.filter(|a| !a.is_empty()) else {
                        causes.push(Cause::required(format!("endpoints[{i}].addresses")));
                        continue;
                    };
                    for (j, a) in addrs.iter().enumerate() {
                        let s = a.as_str().unwrap_or("");
                        let ok = match t {
                            "IPv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
                            "IPv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
                            _ => subdomain_errors(s).is_empty(),
                        };
                        if !ok {
                            causes.push(Cause::invalid(
                                format!("endpoints[{i}].addresses[{j}]"),
                                a,
                                &format!("must be a valid {t} address"),
                            ));
                        }
                    }
                }
            }
        }
    }
}

fn hpa(obj: &Value, causes: &mut Vec<Cause>) {
    let min = obj
        .pointer("/spec/minReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let max = obj
        .pointer("/spec/maxReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if min < 1 {
        causes.push(Cause::invalid(
            "spec.minReplicas",
            &Value::from(min),
            "must be greater than or equal to 1",
        ));
    }
    if max < min {
        causes.push(Cause::invalid(
            "spec.maxReplicas",
            &Value::from(max),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    for f in ["kind", "name"] {
        if str_at(obj, &format!("/spec/scaleTargetRef/{f}"))
            .unwrap_or("")
            .is_empty()
        {
            causes.push(Cause::required(format!("spec.scaleTargetRef.{f}")));
        }
    }
}

fn pdb(obj: &Value, causes: &mut Vec<Cause>) {
    if obj.pointer("/spec/minAvailable").is_some() && obj.pointer("/spec/maxUnavailable").is_some()
    {
        causes.push(Cause::invalid(
            "spec",
            obj.pointer("/spec").unwrap_or(&Value::Null),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
}

/// Kind-specific validation for built-ins (after decoding); returns every cause found.
pub fn builtin(group: &str, kind: &str, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name_is_label = matches!((group, kind), ("", "Namespace") | ("", "Service"));
    metadata(obj, name_is_label, &mut causes);
    match (group, kind) {
        ("apps", "Deployment") | ("apps", "ReplicaSet") => deployment_like(obj, &mut causes),
        ("", "Pod") => match obj.get("spec") {
            Some(s) => containers(s, "spec", &mut causes),
            None => causes.push(Cause::required("spec.containers")),
        },
        ("", "Service") => service(obj, &mut causes),
        ("discovery.k8s.io", "EndpointSlice") => endpoint_slice(obj, &mut causes),
        ("autoscaling", "HorizontalPodAutoscaler") => hpa(obj, &mut causes),
        ("policy", "PodDisruptionBudget") => pdb(obj, &mut causes),
        ("", "ConfigMap") | ("", "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                if let Some(m) = obj.get(field).and_then(Value::as_object) {
                    for k in m.keys() {
                        let ok = !k.is_empty()
                            && k.len() <= 253
                            && k.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
                        if !ok {
                            causes.push(Cause::invalid(
                                field,
                                &Value::String(k.clone()),
                                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                            ));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_selector_must_match_template() {
        // A Deployment whose selector does not select its own pods is rejected.
        let d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = builtin("apps", "Deployment", &d);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn names_and_labels_follow_rfc1123() {
        // Upper-case names and bad label values are field errors.
        let o = json!({"metadata": {"name": "Bad_Name", "labels": {"ok": "-bad"}}});
        let causes = builtin("", "ConfigMap", &o);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["metadata.name", "metadata.labels"]);
    }

    #[test]
    fn multi_port_service_needs_port_names() {
        // With more than one port every port must be named.
        let s = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}, {"port": 81}]}});
        let causes = builtin("", "Service", &s);
        assert!(causes.iter().any(|c| c.field == "spec.ports[0].name"));
    }

    #[test]
    fn hpa_bounds_are_checked() {
        // maxReplicas below minReplicas is rejected, as is a missing scale target.
        let h = json!({"metadata": {"name": "h"}, "spec": {"minReplicas": 3, "maxReplicas": 2, "scaleTargetRef": {"kind": "Deployment"}}});
        let fields: Vec<String> = builtin("autoscaling", "HorizontalPodAutoscaler", &h)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, vec!["spec.maxReplicas", "spec.scaleTargetRef.name"]);
    }

    #[test]
    fn endpoint_slice_needs_address_type() {
        // EndpointSlice.addressType is required and must be a known type.
        let e = json!({"metadata": {"name": "s"}, "addressType": "IPv5"});
        let causes = builtin("discovery.k8s.io", "EndpointSlice", &e);
        assert_eq!(causes[0].reason, "FieldValueNotSupported");
    }
}
