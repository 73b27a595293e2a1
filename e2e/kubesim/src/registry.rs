//! The resource types kubesim serves: the built-in kinds and those added by CRDs.
//!
//! A [`ResourceDef`] says how a resource is addressed (group, version, plural), how it is
//! validated (a k8s-openapi type for built-ins, an `openAPIV3Schema` for custom resources) and
//! which subresources it has. Pure data; the store owns one [`Registry`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// Validates a built-in object by decoding it into its k8s-openapi type; returns the
/// normalised object (what the real server would store) or a decoding error.
pub type Decoder = fn(&Value) -> Result<Value, String>;

/// Adds a built-in kind's OpenAPI schema to a generator and returns the reference to it.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// Where a custom resource keeps the fields of its `scale` subresource (JSON paths like
/// `.spec.replicas`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One printer column of a CRD (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// Everything kubesim knows about one served resource.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub group: String,
    /// Served versions; the first is the preferred (and storage) version.
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// Built-ins: the k8s-openapi decoder. `None` for custom resources.
    pub decoder: Option<Decoder>,
    /// Built-ins: the OpenAPI schema of the k8s-openapi type (for `kubectl explain`).
    pub openapi: Option<SchemaFn>,
    /// Custom resources: the structural schema of each version.
    pub schemas: BTreeMap<String, Value>,
    /// Custom resources: the CEL rules of each version's schema, compiled once when the CRD is
    /// stored rather than looked up on every write.
    pub cel_rules: BTreeMap<String, Arc<crate::schema::cel::Node>>,
    pub printer_columns: BTreeMap<String, Vec<PrinterColumn>>,
    /// Custom resources: the name of the CRD that serves this resource.
    pub crd: Option<String>,
    /// Extra verbs beyond the standard set (none today) or fewer (`events` are not watched
    /// differently, so this stays the standard list).
    pub verbs: Vec<&'static str>,
}

pub const STANDARD_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceDef {
    /// The key objects of this resource are stored under: `(group, plural)`.
    pub fn key(&self) -> ResKey {
        ResKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    pub fn preferred_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn is_custom(&self) -> bool {
        self.crd.is_some()
    }

    pub fn schema(&self, version: &str) -> Option<&Value> {
        self.schemas.get(version)
    }
}

/// Identifies a stored resource independent of version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResKey {
    pub group: String,
    pub plural: String,
}

/// All served resources, indexed for lookup by URL and by kind.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    defs: BTreeMap<ResKey, Arc<ResourceDef>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut r = Registry::default();
        for def in crate::builtins::all() {
            r.insert(def);
        }
        r
    }

    pub fn insert(&mut self, def: ResourceDef) {
        self.defs.insert(def.key(), Arc::new(def));
    }

    pub fn remove(&mut self, key: &ResKey) -> Option<Arc<ResourceDef>> {
        self.defs.remove(key)
    }

    pub fn get(&self, key: &ResKey) -> Option<Arc<ResourceDef>> {
        self.defs.get(key).cloned()
    }

    /// The resource served at `/apis/<group>/<version>/<plural>`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        let key = ResKey {
            group: group.to_string(),
            plural: plural.to_string(),
        };
        self.defs
            .get(&key)
            .filter(|d| d.versions.iter().any(|v| v == version))
            .cloned()
    }

    /// The resource whose kind is `kind` in `apiVersion`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        let (group, version) = split_api_version(api_version);
        self.defs
            .values()
            .find(|d| d.group == group && d.kind == kind && d.versions.iter().any(|v| v == version))
            .cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceDef>> {
        self.defs.values()
    }

    /// Group names and their versions, in a stable order (`""` is the core group).
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in self.defs.values() {
            let versions = groups.entry(d.group.clone()).or_default();
            for v in &d.versions {
                if !versions.contains(v) {
                    versions.push(v.clone());
                }
            }
        }
        groups
    }
}

/// Splits `apps/v1` into `("apps", "v1")` and `v1` into `("", "v1")`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}
