//! The `<name>-canary` Deployment that runs a new pod template during a guarded rollout's
//! analysis, and the revision that names a template.
//!
//! Pure: built from the Deployment the normal builder produces for the current spec, so the canary
//! runs exactly what a promotion would roll out. Its pods keep the MicroService's app labels
//! (and, with failover, the membership label), so the Service sends them their share of traffic
//! by pod count and the failover engine probes them like the stable pods; the extra
//! `rollout.flotilla.rs/track: canary` label tells them apart. The stable Deployment's selector
//! also matches them, but Kubernetes controllers only manage the pods and ReplicaSets they own
//! (controller owner references), so neither Deployment touches the other's pods.

use std::collections::BTreeMap;

use flotilla_crds::{annotations, labels, RolloutSpec};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use sha2::{Digest, Sha256};

/// Hex characters of the template hash kept as the revision (40 bits: collisions between two
/// templates of one MicroService are not a practical concern).
const REVISION_LEN: usize = 10;

/// Name of the canary Deployment of MicroService `name`.
pub fn canary_name(name: &str) -> String {
    format!("{name}-canary")
}

/// The revision of a Deployment's pod template: a short hash of the template as built, so the
/// same spec always yields the same revision and any template change (image, env, config hash,
/// resources, ...) yields a new one. Replica count and other Deployment fields do not count.
pub fn template_revision(d: &Deployment) -> String {
    let template = d.spec.as_ref().map(|s| &s.template);
    let bytes = serde_json::to_vec(&template).unwrap_or_default();
    let digest = hex::encode(Sha256::digest(&bytes));
    digest[..REVISION_LEN].to_string()
}

/// How many canary pods run during an analysis: `canaryReplicas`, or `canaryPercent` of the
/// stable replicas rounded up, or one; never more than the stable side (so the canary's share of
/// traffic, `canary / (stable + canary)`, is at most one half) and never fewer than one.
pub fn canary_replicas(r: &RolloutSpec, stable_replicas: i32) -> i32 {
    let wanted = match (r.canary_replicas, r.canary_percent) {
        (Some(n), _) => n,
        (None, Some(pct)) => {
            let pods = i64::from(stable_replicas.max(0)) * i64::from(pct);
            i32::try_from((pods + 99) / 100).unwrap_or(i32::MAX)
        }
        (None, None) => 1,
    };
    wanted.min(stable_replicas).max(1)
}

/// The canary Deployment: the desired (new-template) Deployment renamed to `<name>-canary`, with
/// `replicas` pods, the canary track label on itself, its selector and its pods, and the
/// revision annotation on itself and its pods.
pub fn build_canary(desired: &Deployment, revision: &str, replicas: i32) -> Deployment {
    let name = desired.metadata.name.clone().unwrap_or_default();
    let spec = desired.spec.clone().unwrap_or_default();
    let track = (labels::TRACK.to_string(), labels::TRACK_CANARY.to_string());
    let rev = (annotations::REVISION.to_string(), revision.to_string());

    let mut meta_labels = desired.metadata.labels.clone().unwrap_or_default();
    meta_labels.insert(track.0.clone(), track.1.clone());
    let mut selector = spec.selector.match_labels.clone().unwrap_or_default();
    selector.insert(track.0.clone(), track.1.clone());

    let mut pod_meta = spec.template.metadata.clone().unwrap_or_default();
    pod_meta
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(track.0.clone(), track.1.clone());
    pod_meta
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(rev.0.clone(), rev.1.clone());

    Deployment {
        metadata: ObjectMeta {
            name: Some(canary_name(&name)),
            namespace: desired.metadata.namespace.clone(),
            labels: Some(meta_labels),
            annotations: Some(BTreeMap::from([rev])),
            owner_references: desired.metadata.owner_references.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(pod_meta),
                spec: spec.template.spec,
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use flotilla_crds::MicroServiceSpec;

    use super::*;
    use crate::build::{build_deployment, testutil::validated, OperatorInputs};

    fn desired(image: &str, failover: bool) -> Deployment {
        let mut spec = MicroServiceSpec::with_image(image);
        spec.replicas = 4;
        if failover {
            spec.failover.enabled = true;
            spec.failover.fallback = Some("backup".into());
        }
        build_deployment(&validated("users", spec), &OperatorInputs::default())
    }

    fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }

    /// The canary runs the desired template under its own name, selector and track label, owned
    /// by the MicroService, with the app and membership labels kept so it shares the traffic.
    #[test]
    fn canary_runs_the_new_template_beside_the_stable_one() {
        let d = desired("users:2", true);
        let c = build_canary(&d, "abc", 2);
        assert_eq!(c.metadata.name.as_deref(), Some("users-canary"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(c.metadata.owner_references, d.metadata.owner_references);
        let spec = c.spec.clone().unwrap_or_default();
        assert_eq!(spec.replicas, Some(2));
        let sel = spec.selector.match_labels.unwrap_or_default();
        assert_eq!(sel.get(labels::TRACK).map(String::as_str), Some("canary"));
        assert_eq!(sel.get(labels::INSTANCE).map(String::as_str), Some("users"));
        let pl = pod_labels(&c);
        assert_eq!(pl.get(labels::TRACK).map(String::as_str), Some("canary"));
        assert_eq!(
            pl.get(&labels::serves("users")).map(String::as_str),
            Some("true")
        );
        // Every selector label is on the pods, or the API server rejects the Deployment.
        for (k, v) in &sel {
            assert_eq!(pl.get(k), Some(v), "pod label {k}");
        }
        let pod_ann = spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        assert_eq!(
            pod_ann.get(annotations::REVISION).map(String::as_str),
            Some("abc")
        );
        assert_eq!(spec.template.spec, d.spec.and_then(|s| s.template.spec));
    }

    /// Building twice gives equal objects, and the stable Deployment is left untouched.
    #[test]
    fn building_twice_gives_equal_objects() {
        let d = desired("users:2", false);
        let before = d.clone();
        assert_eq!(build_canary(&d, "r", 1), build_canary(&d, "r", 1));
        assert_eq!(d, before);
        assert!(!pod_labels(&d).contains_key(labels::TRACK));
    }

    /// The revision follows the pod template only: a new image changes it, a new replica count
    /// does not, and the same spec always gives the same revision.
    #[test]
    fn revision_follows_the_template() {
        let a = desired("users:1", false);
        let b = desired("users:2", false);
        assert_eq!(
            template_revision(&a),
            template_revision(&desired("users:1", false))
        );
        assert_ne!(template_revision(&a), template_revision(&b));
        let mut scaled = a.clone();
        if let Some(s) = scaled.spec.as_mut() {
            s.replicas = Some(9);
        }
        assert_eq!(template_revision(&a), template_revision(&scaled));
        assert_eq!(template_revision(&a).len(), REVISION_LEN);
    }

    /// The canary size honours the count or percentage and is capped at the stable side, so its
    /// traffic share never exceeds one half.
    #[test]
    fn canary_size_is_capped() {
        let mut r = RolloutSpec::default();
        assert_eq!(canary_replicas(&r, 10), 1);
        r.canary_replicas = Some(3);
        assert_eq!(canary_replicas(&r, 10), 3);
        assert_eq!(canary_replicas(&r, 2), 2);
        r.canary_replicas = None;
        r.canary_percent = Some(25);
        assert_eq!(canary_replicas(&r, 10), 3);
        assert_eq!(canary_replicas(&r, 1), 1);
        r.canary_percent = Some(100);
        assert_eq!(canary_replicas(&r, 4), 4);
        assert_eq!(canary_replicas(&r, 0), 1);
    }
}
