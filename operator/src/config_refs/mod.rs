//! Rollouts when referenced configuration changes (`--rollout-on-config-change`): a stage
//! between validation and build that reads the Secrets and ConfigMaps a MicroService's `env`
//! references and turns their referenced values into the `flotilla.rs/config-digest`
//! pod-template annotation, so that a rotated Secret changes the template and the pods roll
//! (through the guarded rollout's analysis when the service has one).
//!
//! - this module: which objects and keys a spec references ([`sources`]), pure;
//! - [`digest`]: the digest per object, what is held when an object cannot be read, the
//!   annotation and what changed since the last template; pure, no client;
//! - [`read`]: the GETs of the referenced objects, the stage's only I/O, and the previous digest
//!   from the Deployment caches;
//! - [`trigger`]: metadata-only watches on Secrets and ConfigMaps and the index from an object to
//!   the MicroServices that read it, which wakes exactly those.
//!
//! `env[].valueFrom.secretKeyRef` and `configMapKeyRef` are the only references a MicroService
//! can make (the API has no `envFrom` and no volumes of its own choosing). The MicroService's own
//! `<name>-config` ConfigMap is not a source: its data is the spec's `config`, already covered by
//! `flotilla.rs/config-hash`.

pub mod digest;
pub mod read;
pub mod trigger;

use std::collections::BTreeMap;

use flotilla_crds::MicroServiceSpec;

use crate::build::config_map_name;

pub use digest::{ConfigDigest, Observed, Outcome, SourceProblem};
pub use read::{observe, Observation};

/// The kind of object an `env` entry reads a value from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    /// A ConfigMap (`configMapKeyRef`).
    ConfigMap,
    /// A Secret (`secretKeyRef`).
    Secret,
}

impl SourceKind {
    /// The Kubernetes kind, as written in the annotation and in Events.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::ConfigMap => "ConfigMap",
            SourceKind::Secret => "Secret",
        }
    }

    /// The kind named `text`, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ConfigMap" => Some(SourceKind::ConfigMap),
            "Secret" => Some(SourceKind::Secret),
            _ => None,
        }
    }
}

/// An object a MicroService reads from, within its namespace.
pub type SourceKey = (SourceKind, String);

/// One object the container's `env` reads from, and which of its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Secret or ConfigMap.
    pub kind: SourceKind,
    /// Its name, in the MicroService's namespace.
    pub name: String,
    /// The referenced keys, each with whether some reference to it is not optional (a pod
    /// cannot start without such a key).
    pub keys: BTreeMap<String, bool>,
}

impl Source {
    /// The kind and name.
    pub fn key(&self) -> SourceKey {
        (self.kind, self.name.clone())
    }

    /// Whether a pod cannot start without the object (some reference to it is not optional).
    pub fn required(&self) -> bool {
        self.keys.values().any(|r| *r)
    }

    /// `Secret <name>`, as Events and messages name it.
    pub fn label(&self) -> String {
        label(&self.key())
    }
}

/// `Secret <name>` or `ConfigMap <name>`.
pub fn label(key: &SourceKey) -> String {
    format!("{} {}", key.0.as_str(), key.1)
}

/// The Secrets and ConfigMaps the `env` of MicroService `name` reads, ordered by kind and name,
/// without the MicroService's own `<name>-config` ConfigMap.
pub fn sources(name: &str, spec: &MicroServiceSpec) -> Vec<Source> {
    let own = config_map_name(name);
    let mut found: BTreeMap<SourceKey, BTreeMap<String, bool>> = BTreeMap::new();
    for from in spec
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value_from.as_ref())
    {
        let reference = match (&from.secret_key_ref, &from.config_map_key_ref) {
            (Some(s), _) => Some((SourceKind::Secret, &s.name, &s.key, s.optional)),
            (None, Some(c)) if c.name != own => {
                Some((SourceKind::ConfigMap, &c.name, &c.key, c.optional))
            }
            _ => None,
        };
        let Some((kind, object, key, optional)) = reference else {
            continue;
        };
        let required = !optional.unwrap_or(false);
        let keys = found.entry((kind, object.clone())).or_default();
        let entry = keys.entry(key.clone()).or_insert(false);
        *entry |= required;
    }
    found
        .into_iter()
        .map(|((kind, name), keys)| Source { kind, name, keys })
        .collect()
}

#[cfg(test)]
mod tests {
    use flotilla_crds::{env_from_config_map, env_from_secret};
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};

    use super::*;

    /// Every `secretKeyRef` and `configMapKeyRef` is a source, grouped by object in kind and
    /// name order; literal values, field references and the service's own config ConfigMap are
    /// not; a key is required when any of its references is not optional.
    #[test]
    fn sources_are_the_referenced_objects_and_keys() {
        let mut spec = MicroServiceSpec::with_image("x");
        spec.env = Some(vec![
            env_from_secret("B", "zeta", "b", None),
            env_from_secret("A", "alpha", "a", Some(true)),
            env_from_secret("A2", "alpha", "a", Some(false)),
            env_from_secret("C", "alpha", "c", Some(true)),
            env_from_config_map("M", "settings", "mode"),
            env_from_config_map("OWN", "auth-config", "LOG_LEVEL"),
            EnvVar {
                name: "LITERAL".into(),
                value: Some("1".into()),
                ..EnvVar::default()
            },
            EnvVar {
                name: "NODE".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "spec.nodeName".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
        ]);
        let found = sources("auth", &spec);
        let keys: Vec<(SourceKey, Vec<(String, bool)>)> = found
            .iter()
            .map(|s| (s.key(), s.keys.clone().into_iter().collect()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (
                    (SourceKind::ConfigMap, "settings".into()),
                    vec![("mode".into(), true)]
                ),
                (
                    (SourceKind::Secret, "alpha".into()),
                    vec![("a".into(), true), ("c".into(), false)]
                ),
                (
                    (SourceKind::Secret, "zeta".into()),
                    vec![("b".into(), true)]
                ),
            ]
        );
        assert!(found.iter().all(Source::required));
        assert!(sources("auth", &MicroServiceSpec::with_image("x")).is_empty());
    }
}
