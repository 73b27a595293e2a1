//! Unit tests of the no-op detection and replica handover checks.

use flotilla_crds::MicroServiceSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use serde_json::json;

use super::*;
use crate::build::{build, testutil::validated};

fn live_from(desired: &Deployment, f: impl FnOnce(&mut Value)) -> Deployment {
    let mut v = serde_json::to_value(desired).unwrap_or_default();
    // What a server adds: defaults, status, bookkeeping.
    v["metadata"]["resourceVersion"] = json!("42");
    v["metadata"]["uid"] = json!("dep-uid");
    v["spec"]["progressDeadlineSeconds"] = json!(600);
    v["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    v["status"] = json!({"replicas": 1});
    f(&mut v);
    serde_json::from_value(v).unwrap_or_else(|e| panic!("live deployment: {e}"))
}

fn stamped() -> Deployment {
    let mut d = build(
        &validated("auth", MicroServiceSpec::with_image("x")),
        &Default::default(),
    )
    .deployment;
    stamp_applied_hash(&mut d).unwrap_or_else(|e| panic!("{e}"));
    d
}

/// Nothing changed → no write: a live object with server-added fields still contains the
/// desired one.
#[test]
fn nothing_changed_no_write() {
    let d = stamped();
    let live = live_from(&d, |_| {});
    assert!(!needs_apply(&d, &live).unwrap_or(true));
}

/// Drift on a field Flotilla owns (someone edited the image) needs an apply.
#[test]
fn drift_needs_apply() {
    let d = stamped();
    let live = live_from(&d, |v| {
        v["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil")
    });
    assert!(needs_apply(&d, &live).unwrap_or(false));
}

/// Removing a field from the desired object (pod annotation dropped) changes the hash, so the
/// apply that releases the field happens even though the rest is contained.
#[test]
fn removed_field_needs_apply() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.pod_annotations = Some([("team".to_string(), "a".to_string())].into());
    let mut before = build(&validated("auth", spec), &Default::default()).deployment;
    stamp_applied_hash(&mut before).unwrap_or_else(|e| panic!("{e}"));
    let live = live_from(&before, |_| {});
    let after = stamped();
    assert!(needs_apply(&after, &live).unwrap_or(false));
}

/// Stamping is deterministic and ignores a previous stamp.
#[test]
fn stamp_is_stable() {
    let a = stamped();
    let mut b = a.clone();
    stamp_applied_hash(&mut b).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b);
    assert!(a.annotations().contains_key(annotations::APPLIED_HASH));
}

/// Containment: objects may have extra keys, arrays must match in length.
#[test]
fn containment_rules() {
    assert!(is_contained(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    assert!(!is_contained(&json!({"a": 1, "c": 3}), &json!({"a": 1})));
    assert!(!is_contained(&json!([1]), &json!([1, 2])));
    assert!(is_contained(&json!([{"n": 1}]), &json!([{"n": 1, "x": 0}])));
    assert!(!is_contained(&json!("a"), &json!("b")));
}

/// Replica ownership is read from the `flotilla` Apply entry of managedFields.
#[test]
fn replica_ownership_from_managed_fields() {
    let entry = |manager: &str, op: &str, fields: Value| ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some(op.into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(fields)),
        ..ManagedFieldsEntry::default()
    };
    let mut d = stamped();
    d.metadata.managed_fields = Some(vec![entry(
        "flotilla",
        "Apply",
        json!({"f:spec": {"f:replicas": {}, "f:template": {}}}),
    )]);
    assert!(applies_replicas(&d, "flotilla"));
    d.metadata.managed_fields = Some(vec![
        entry("flotilla", "Apply", json!({"f:spec": {"f:template": {}}})),
        entry(
            "kube-controller-manager",
            "Update",
            json!({"f:spec": {"f:replicas": {}}}),
        ),
    ]);
    assert!(!applies_replicas(&d, "flotilla"));
}

/// One reconcile's child writes become one Event per outcome, naming every child, and a
/// reconcile that wrote nothing announces nothing.
#[test]
fn changes_are_summarised_in_one_event_per_outcome() {
    let created = Changes(vec![
        ("ConfigMap", "users-config".into(), Outcome::Created),
        ("Deployment", "users".into(), Outcome::Created),
        ("Service", "users".into(), Outcome::Created),
    ]);
    assert_eq!(
        created.summary(),
        vec![(
            "Created",
            "Apply",
            "created ConfigMap users-config, Deployment users, Service users".to_string()
        )]
    );
    let mixed = Changes(vec![
        ("Deployment", "users".into(), Outcome::Updated),
        ("HorizontalPodAutoscaler", "users".into(), Outcome::Deleted),
    ]);
    let reasons: Vec<&str> = mixed.summary().iter().map(|(r, _, _)| *r).collect();
    assert_eq!(reasons, ["Updated", "Deleted"]);
    assert!(Changes::default().summary().is_empty());
}
