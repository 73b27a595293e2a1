//! The ConfigMap holding `spec.config`, and the hash that rolls the pods when it changes.

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use super::meta::child_meta;
use crate::validate::ValidatedSpec;

/// Name of the ConfigMap of MicroService `name`.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-config")
}

/// The ConfigMap, or `None` when `spec.config` is absent or empty (an existing one is deleted).
pub fn build_config_map(v: &ValidatedSpec) -> Option<ConfigMap> {
    let data = v.spec.config.as_ref().filter(|c| !c.is_empty())?;
    Some(ConfigMap {
        metadata: child_meta(v, &config_map_name(&v.name)),
        data: Some(data.clone()),
        ..ConfigMap::default()
    })
}

/// A short stable hash of the config data, put on the pod template so a change rolls the pods.
/// `None` when there is no config.
pub fn config_hash(v: &ValidatedSpec) -> Option<String> {
    let data = v.spec.config.as_ref().filter(|c| !c.is_empty())?;
    let mut h = Sha256::new();
    // BTreeMap iterates in key order; length prefixes keep ("ab","c") and ("a","bc") apart.
    for (k, val) in data {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((val.len() as u64).to_le_bytes());
        h.update(val.as_bytes());
    }
    Some(hex::encode(&h.finalize()[..8]))
}

#[cfg(test)]
mod tests {
    use flotilla_crds::MicroServiceSpec;

    use super::*;
    use crate::build::testutil::validated;

    fn with_config(pairs: &[(&str, &str)]) -> ValidatedSpec {
        let mut spec = MicroServiceSpec::with_image("x");
        spec.config = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        validated("auth", spec)
    }

    /// The ConfigMap carries exactly the config data, named `<name>-config`, owned by the MicroService.
    #[test]
    fn config_map_holds_data() {
        let cm = build_config_map(&with_config(&[("LOG_LEVEL", "info"), ("a.yaml", "x: 1")]));
        let cm = cm.unwrap_or_else(|| panic!("config map expected"));
        assert_eq!(cm.metadata.name.as_deref(), Some("auth-config"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("shop"));
        let data = cm.data.unwrap_or_default();
        assert_eq!(data.get("LOG_LEVEL").map(String::as_str), Some("info"));
        assert_eq!(data.len(), 2);
        let owners = cm.metadata.owner_references.unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].controller, Some(true));
    }

    /// Empty config means no ConfigMap (an existing one gets deleted).
    #[test]
    fn empty_config_builds_nothing() {
        assert!(build_config_map(&with_config(&[])).is_none());
        assert!(config_hash(&with_config(&[])).is_none());
    }

    /// The hash changes with any key or value and is stable otherwise.
    #[test]
    fn hash_tracks_data() {
        let a = config_hash(&with_config(&[("A", "1")]));
        assert_eq!(a, config_hash(&with_config(&[("A", "1")])));
        assert_ne!(a, config_hash(&with_config(&[("A", "2")])));
        assert_ne!(a, config_hash(&with_config(&[("B", "1")])));
        assert_ne!(
            config_hash(&with_config(&[("ab", "c")])),
            config_hash(&with_config(&[("a", "bc")]))
        );
    }
}
