//! Constructors for the `spec.env` entries that reference a Secret or ConfigMap key, for code
//! that builds a [`crate::MicroServiceSpec`] in Rust (the operator's tests, tools).

use k8s_openapi::api::core::v1::{ConfigMapKeySelector, EnvVar, EnvVarSource, SecretKeySelector};

/// `var` from key `key` of Secret `name`; `optional: Some(true)` lets the pod start without it.
pub fn env_from_secret(var: &str, name: &str, key: &str, optional: Option<bool>) -> EnvVar {
    EnvVar {
        name: var.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.into(),
                key: key.into(),
                optional,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// `var` from key `key` of ConfigMap `name` (required).
pub fn env_from_config_map(var: &str, name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: var.into(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: name.into(),
                key: key.into(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}
