//! Parsing of Kubernetes REST paths and query strings into a [`Target`] and [`Query`].
//! Pure functions; no store access.

use std::collections::BTreeMap;

/// What a resource URL addresses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Splits a path like `/apis/apps/v1/namespaces/ns/deployments/web/scale`. Returns `None`
/// for paths that are not resource paths (discovery, openapi, ...). `is_resource` tells
/// whether a plural is served, to tell `/api/v1/namespaces/x/pods` (list pods in x) from
/// `/api/v1/namespaces/x/status` (the status of namespace x).
pub fn parse_path(path: &str, is_resource: impl Fn(&str, &str) -> bool) -> Option<Target> {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let (group, version, rest) = match segs.first().map(String::as_str) {
        Some("api") if segs.len() >= 3 => (String::new(), segs[1].clone(), &segs[2..]),
        Some("apis") if segs.len() >= 4 => (segs[1].clone(), segs[2].clone(), &segs[3..]),
        _ => return None,
    };
    let mut t = Target {
        group,
        version,
        ..Target::default()
    };
    let rest: &[String] = if rest.first().map(String::as_str) == Some("namespaces")
        && rest.len() >= 3
        && is_resource(&t.group, &rest[2])
    {
        t.namespace = Some(rest[1].clone());
        &rest[2..]
    } else {
        rest
    };
    t.plural = rest.first()?.clone();
    t.name = rest.get(1).cloned();
    t.subresource = rest.get(2).cloned();
    if rest.len() > 3 {
        return None;
    }
    Some(t)
}

/// Query parameters, first value wins.
#[derive(Debug, Clone, Default)]
pub struct Query(pub BTreeMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let mut map = BTreeMap::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(percent_decode(k))
                .or_insert_with(|| percent_decode(v));
        }
        Query(map)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true") | Some("1"))
    }

    /// `dryRun=All` (the only dry-run value the real server accepts).
    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

/// Decodes `%XX` escapes and `+` (as a space, as form encoding does).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(_: &str, p: &str) -> bool {
        matches!(p, "pods" | "deployments" | "configmaps")
    }

    #[test]
    fn namespaced_subresource_path() {
        // A namespaced object's subresource is split into all its parts.
        let t = parse_path("/apis/apps/v1/namespaces/ns1/deployments/web/scale", known)
            .expect("a resource path");
        assert_eq!(t.group, "apps");
        assert_eq!(t.namespace.as_deref(), Some("ns1"));
        assert_eq!(t.plural, "deployments");
        assert_eq!(t.name.as_deref(), Some("web"));
        assert_eq!(t.subresource.as_deref(), Some("scale"));
    }

    #[test]
    fn namespace_status_is_not_a_namespaced_list() {
        // `/api/v1/namespaces/x/status` is the status of namespace x, not a resource in x.
        let t = parse_path("/api/v1/namespaces/x/status", known).expect("a resource path");
        assert_eq!(t.plural, "namespaces");
        assert_eq!(t.name.as_deref(), Some("x"));
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = parse_path("/api/v1/namespaces/x/pods", known).expect("a resource path");
        assert_eq!(t.namespace.as_deref(), Some("x"));
        assert_eq!(t.name, None);
    }

    #[test]
    fn query_decodes_selectors() {
        // Selectors arrive percent-encoded and are decoded before parsing.
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=true"));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
    }
}
