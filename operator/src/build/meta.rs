//! Labels and metadata shared by every child object.

use std::collections::BTreeMap;

use flotilla_crds::labels;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::validate::ValidatedSpec;

/// The labels that identify the pods of a MicroService (the Deployment selector). Stable for the
/// object's lifetime: a Deployment selector is immutable.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), name.to_string()),
        (labels::INSTANCE.to_string(), name.to_string()),
    ])
}

/// The selector labels as a label-selector string (`status.selector`, scale subresource).
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The standard labels on every child and pod.
pub fn common_labels(v: &ValidatedSpec) -> BTreeMap<String, String> {
    let mut l = selector_labels(&v.name);
    l.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
    l.insert(labels::PART_OF.into(), v.part_of.clone());
    l
}

/// Metadata of a child named `name`: namespace, standard labels and the controller owner
/// reference.
pub fn child_meta(v: &ValidatedSpec, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(v.namespace.clone()),
        labels: Some(common_labels(v)),
        owner_references: v.owner.clone().map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}
