//! Authorization: RBAC as the Kubernetes documentation defines it. Roles and ClusterRoles
//! (with ClusterRole aggregation), RoleBindings and ClusterRoleBindings naming users, groups
//! and ServiceAccounts; rules over apiGroups, resources (with `resource/subresource` and
//! `*/subresource`), resourceNames, verbs and nonResourceURLs (`*` suffix wildcards). Members of
//! `system:masters` are allowed everything before RBAC is consulted, as on a real cluster.
//!
//! Reads roles and bindings from the store on every decision (so a changed binding applies to
//! the next request); never writes. Also the default ClusterRoles a cluster ships.

use serde_json::{json, Value};

use crate::auth::{UserInfo, MASTERS};
use crate::registry::ResKey;
use crate::selectors::LabelSelector;
use crate::status::{qualified, ApiError};
use crate::store::State;

const GROUP: &str = "rbac.authorization.k8s.io";

/// What a request asks to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// For requests that do not address a resource (`/healthz`, `/apis`, `/metrics`).
    pub path: Option<String>,
}

fn key(plural: &str) -> ResKey {
    ResKey {
        group: GROUP.into(),
        plural: plural.into(),
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn has(list: &[&str], want: &str) -> bool {
    list.iter().any(|x| *x == "*" || *x == want)
}

/// Whether one PolicyRule allows the request (the upstream `RuleAllows`).
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !has(&strings(rule.get("verbs")), &a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return strings(rule.get("nonResourceURLs")).iter().any(|u| {
            *u == "*"
                || u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        });
    }
    if !has(&strings(rule.get("apiGroups")), &a.group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = strings(rule.get("resources")).iter().any(|r| {
        *r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    });
    if !resource_ok {
        return false;
    }
    let names = strings(rule.get("resourceNames"));
    names.is_empty() || (!a.name.is_empty() && names.contains(&a.name.as_str()))
}

/// The rules of a ClusterRole, including those aggregated into it by its `aggregationRule`
/// (aggregated roles may aggregate in turn: `admin` takes `edit`'s, which takes `view`'s).
fn cluster_role_rules(st: &State, role: &Value) -> Vec<Value> {
    aggregated_rules(st, role, 3)
}

fn aggregated_rules(st: &State, role: &Value, depth: u8) -> Vec<Value> {
    let mut rules: Vec<Value> = role
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(selectors) = role
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
    {
        let selectors: Vec<LabelSelector> =
            selectors.iter().map(LabelSelector::from_object).collect();
        for other in st.list(&key("clusterroles"), None) {
            if depth > 0 && selectors.iter().any(|s| !s.is_empty() && s.matches(&other)) {
                rules.extend(aggregated_rules(st, &other, depth - 1));
            }
        }
    }
    rules
}

/// Whether a binding's subject is the user (`binding_ns` defaults a ServiceAccount's namespace).
fn subject_matches(subject: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let kind = subject.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = subject.get("name").and_then(Value::as_str).unwrap_or("");
    match kind {
        "User" => user.name == name,
        "Group" => user.in_group(name),
        "ServiceAccount" => {
            let ns = subject
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.service_account() == Some((ns, name))
        }
        _ => false,
    }
}

fn role_rules(st: &State, binding: &Value, binding_ns: &str) -> Vec<Value> {
    let kind = binding
        .pointer("/roleRef/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = binding
        .pointer("/roleRef/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match kind {
        "ClusterRole" => st
            .get(&key("clusterroles"), "", name)
            .map(|r| cluster_role_rules(st, &r))
            .unwrap_or_default(),
        "Role" => st
            .get(&key("roles"), binding_ns, name)
            .and_then(|r| r.get("rules").and_then(Value::as_array).cloned())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Whether the user may do what `a` describes.
pub fn allowed(st: &State, user: &UserInfo, a: &Attributes) -> bool {
    if user.in_group(MASTERS) {
        return true;
    }
    let grants = |binding: &Value, ns: &str| {
        let bound = binding
            .get("subjects")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, ns)));
        bound
            && role_rules(st, binding, ns)
                .iter()
                .any(|r| rule_allows(r, a))
    };
    if st
        .list(&key("clusterrolebindings"), None)
        .iter()
        .any(|b| grants(b, ""))
    {
        return true;
    }
    if a.path.is_some() || a.namespace.is_empty() {
        return false;
    }
    st.list(&key("rolebindings"), Some(&a.namespace))
        .iter()
        .any(|b| grants(b, &a.namespace))
}

/// The 403 a refused request gets, worded as the real API server words it.
pub fn forbidden(user: &UserInfo, a: &Attributes) -> ApiError {
    let mut e = if let Some(path) = &a.path {
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "forbidden: User {:?} cannot {} path {path:?}",
                user.name, a.verb
            ),
        )
    } else {
        let what = qualified(&a.group, &a.resource);
        let subject = if a.name.is_empty() {
            what
        } else {
            format!("{what} {:?}", a.name)
        };
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", a.namespace)
        };
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
                user.name, a.verb, a.group
            ),
        )
    };
    if a.path.is_none() {
        e.details.group = Some(a.group.clone());
        e.details.kind = Some(a.resource.clone());
        if !a.name.is_empty() {
            e.details.name = Some(a.name.clone());
        }
    }
    e
}

fn cluster_role(name: &str, labels: Value, rules: Value, aggregate_from: Option<&str>) -> Value {
    let mut role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    });
    if let Some(label) = aggregate_from {
        role["aggregationRule"] =
            json!({"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]});
        role["rules"] = json!([]);
    }
    role
}

/// The default ClusterRoles and bindings every cluster starts with: `cluster-admin`, the
/// aggregated `admin`/`edit`/`view` (their rules live in the `system:aggregate-to-*` roles, so
/// CRD authors can extend them by label), discovery for every authenticated user, and
/// self-review (`kubectl auth can-i`).
pub fn defaults() -> Vec<(ResKey, Value)> {
    let bootstrap = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let read = json!(["get", "list", "watch"]);
    let write = json!(["create", "delete", "deletecollection", "patch", "update"]);
    let view_core = json!([
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "pods",
        "pods/log",
        "pods/status",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "serviceaccounts",
        "services",
        "services/status",
        "bindings",
        "events",
        "limitranges",
        "namespaces/status",
        "resourcequotas",
        "resourcequotas/status",
        "namespaces"
    ]);
    let view_apps = json!([
        "controllerrevisions",
        "daemonsets",
        "daemonsets/status",
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status"
    ]);
    let mut roles = vec![
        cluster_role(
            "cluster-admin",
            bootstrap.clone(),
            json!([
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ]),
            None,
        ),
        cluster_role(
            "system:discovery",
            bootstrap.clone(),
            json!([
                {"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]},
            ]),
            None,
        ),
        cluster_role(
            "system:basic-user",
            bootstrap.clone(),
            json!([
                {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
            ]),
            None,
        ),
        cluster_role(
            "admin",
            bootstrap.clone(),
            json!([]),
            Some("rbac.authorization.k8s.io/aggregate-to-admin"),
        ),
        cluster_role(
            "edit",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            json!([]),
            Some("rbac.authorization.k8s.io/aggregate-to-edit"),
        ),
        cluster_role(
            "view",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
            json!([]),
            Some("rbac.authorization.k8s.io/aggregate-to-view"),
        ),
        cluster_role(
            "system:aggregate-to-view",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-view": "true"}),
            json!([
                {"apiGroups": [""], "resources": view_core, "verbs": read},
                {"apiGroups": ["apps"], "resources": view_apps, "verbs": read},
                {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers", "horizontalpodautoscalers/status"], "verbs": read},
                {"apiGroups": ["batch"], "resources": ["cronjobs", "cronjobs/status", "jobs", "jobs/status"], "verbs": read},
                {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets", "poddisruptionbudgets/status"], "verbs": read},
                {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingresses/status", "networkpolicies"], "verbs": read},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
            ]),
            None,
        ),
        cluster_role(
            "system:aggregate-to-edit",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
            json!([
                {"apiGroups": [""], "resources": ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "pods/eviction"], "verbs": ["create", "delete", "deletecollection", "patch", "update"]},
                {"apiGroups": [""], "resources": ["configmaps", "events", "persistentvolumeclaims", "replicationcontrollers", "replicationcontrollers/scale", "secrets", "serviceaccounts", "services", "services/proxy", "endpoints"], "verbs": write},
                {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": read},
                {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]},
                {"apiGroups": ["apps"], "resources": ["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets", "replicasets/scale", "statefulsets", "statefulsets/scale"], "verbs": write},
                {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": write},
                {"apiGroups": ["batch"], "resources": ["cronjobs", "jobs"], "verbs": write},
                {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": write},
                {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "networkpolicies"], "verbs": write},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": write},
            ]),
            None,
        ),
        cluster_role(
            "system:aggregate-to-admin",
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            json!([
                {"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]},
                {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings", "roles"], "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]},
            ]),
            None,
        ),
    ];
    let binding = |name: &str, role: &str, group: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": group}],
        })
    };
    let mut out: Vec<(ResKey, Value)> = roles.drain(..).map(|r| (key("clusterroles"), r)).collect();
    out.push((
        key("clusterrolebindings"),
        binding("cluster-admin", "cluster-admin", MASTERS),
    ));
    out.push((
        key("clusterrolebindings"),
        binding(
            "system:discovery",
            "system:discovery",
            crate::auth::AUTHENTICATED,
        ),
    ));
    out.push((
        key("clusterrolebindings"),
        binding(
            "system:basic-user",
            "system:basic-user",
            crate::auth::AUTHENTICATED,
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            namespace: "ns".into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            path: None,
        }
    }

    #[test]
    fn rules_match_verbs_groups_subresources_and_names() {
        // The upstream matching rules: a subresource needs `res/sub` or `*/sub`, resourceNames
        // never match a nameless request, `*` matches anything.
        let rule = json!({"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "verbs": ["get", "patch"]});
        assert!(rule_allows(
            &rule,
            &attrs("patch", "apps", "deployments", "", "x")
        ));
        assert!(rule_allows(
            &rule,
            &attrs("get", "apps", "deployments", "scale", "x")
        ));
        assert!(!rule_allows(
            &rule,
            &attrs("get", "apps", "deployments", "status", "x")
        ));
        assert!(!rule_allows(
            &rule,
            &attrs("delete", "apps", "deployments", "", "x")
        ));
        assert!(!rule_allows(
            &rule,
            &attrs("get", "", "deployments", "", "x")
        ));
        let sub = json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]});
        assert!(rule_allows(
            &sub,
            &attrs("update", "flotilla.rs", "microservices", "status", "m")
        ));
        assert!(!rule_allows(
            &sub,
            &attrs("update", "flotilla.rs", "microservices", "", "m")
        ));
        let named = json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["lock"], "verbs": ["get", "list"]});
        assert!(rule_allows(
            &named,
            &attrs("get", "coordination.k8s.io", "leases", "", "lock")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("get", "coordination.k8s.io", "leases", "", "other")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("list", "coordination.k8s.io", "leases", "", "")
        ));
        let urls = json!({"nonResourceURLs": ["/metrics", "/apis/*"], "verbs": ["get"]});
        let path = |p: &str| Attributes {
            verb: "get".into(),
            path: Some(p.into()),
            ..Attributes::default()
        };
        assert!(rule_allows(&urls, &path("/metrics")));
        assert!(rule_allows(&urls, &path("/apis/apps")));
        assert!(!rule_allows(&urls, &path("/api")));
    }

    #[test]
    fn refusals_read_as_the_real_server_words_them() {
        // Users and tools grep these messages; they must match the real API server's.
        let user = crate::auth::service_account_user("ns", "sa", "");
        let e = forbidden(&user, &attrs("patch", "apps", "deployments", "", "x"));
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            r#"deployments.apps "x" is forbidden: User "system:serviceaccount:ns:sa" cannot patch resource "deployments" in API group "apps" in the namespace "ns""#
        );
        let mut list = attrs("list", "", "pods", "", "");
        list.namespace.clear();
        assert_eq!(
            forbidden(&user, &list).message,
            r#"pods is forbidden: User "system:serviceaccount:ns:sa" cannot list resource "pods" in API group "" at the cluster scope"#
        );
    }
}
