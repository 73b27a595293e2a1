//! Unit tests of the config digest.

use flotilla_crds::MicroServiceSpec;
use k8s_openapi::api::core::v1::EnvVar;

use super::*;
use crate::build::testutil::validated;
use crate::build::{build, OperatorInputs};
use crate::config_refs::sources;
use crate::rollout::template_revision;
use flotilla_crds::{env_from_config_map, env_from_secret};

fn spec_with(env: Vec<EnvVar>) -> MicroServiceSpec {
    let mut spec = MicroServiceSpec::with_image("flotilla/auth:0.1.0");
    spec.env = Some(env);
    spec
}

/// auth's references: two keys of `auth-secrets`, one key of ConfigMap `settings`.
fn auth_env() -> Vec<EnvVar> {
    vec![
        env_from_secret("JWT_SIGNING_KEY", "auth-secrets", "signing-key", None),
        env_from_secret("ADMIN_TOKEN", "auth-secrets", "admin-token", None),
        env_from_config_map("MODE", "settings", "mode"),
    ]
}

fn found(pairs: &[(&str, &str)]) -> Observed {
    Observed::Found(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), Some(v.as_bytes().to_vec())))
            .collect(),
    )
}

fn secret(name: &str) -> SourceKey {
    (SourceKind::Secret, name.to_string())
}

fn config_map(name: &str) -> SourceKey {
    (SourceKind::ConfigMap, name.to_string())
}

/// What `read` observes of auth's sources: only the referenced keys, as it extracts them.
fn auth_observed(signing_key: &str, mode: &str) -> BTreeMap<SourceKey, Observed> {
    BTreeMap::from([
        (
            secret("auth-secrets"),
            found(&[("admin-token", "t0k3n"), ("signing-key", signing_key)]),
        ),
        (config_map("settings"), found(&[("mode", mode)])),
    ])
}

fn digest_of(env: Vec<EnvVar>, observed: &BTreeMap<SourceKey, Observed>) -> Outcome {
    compute(
        &sources("auth", &spec_with(env)),
        observed,
        &ConfigDigest::default(),
    )
}

fn entry(d: &ConfigDigest, key: &SourceKey) -> Option<String> {
    d.0.get(key).cloned()
}

/// The same values give the same digest whatever the order of `env`, and the annotation lists
/// the objects in kind and name order.
#[test]
fn digest_is_stable_and_ordered() {
    let observed = auth_observed("k1", "fast");
    let a = digest_of(auth_env(), &observed);
    let mut reversed = auth_env();
    reversed.reverse();
    let b = digest_of(reversed, &observed);
    assert_eq!(a, b);
    assert_eq!(a.problem, None);
    let value = a.digest.annotation().unwrap_or_default();
    let objects: Vec<&str> = value
        .split(',')
        .filter_map(|e| e.split_once(':').map(|(o, _)| o))
        .collect();
    assert_eq!(objects, ["ConfigMap/settings", "Secret/auth-secrets"]);
    assert_eq!(ConfigDigest::parse(&value), a.digest);
}

/// Only referenced keys count: an unreferenced key of the same Secret changing leaves the
/// digest alone, a referenced one changes that object's entry and no other.
#[test]
fn only_referenced_keys_count() {
    let sources = sources("auth", &spec_with(auth_env()));
    let base = auth_observed("k1", "fast");
    let before = compute(&sources, &base, &ConfigDigest::default()).digest;
    // `read` extracts the referenced keys only; an extra key stands for one it would not.
    let mut extra = base.clone();
    extra.insert(
        secret("auth-secrets"),
        found(&[
            ("admin-token", "t0k3n"),
            ("signing-key", "k1"),
            ("unused", "x"),
        ]),
    );
    assert_eq!(
        compute(&sources, &extra, &ConfigDigest::default()).digest,
        before
    );
    let rotated = compute(&sources, &auth_observed("k2", "fast"), &before).digest;
    assert_ne!(
        entry(&rotated, &secret("auth-secrets")),
        entry(&before, &secret("auth-secrets"))
    );
    assert_eq!(
        entry(&rotated, &config_map("settings")),
        entry(&before, &config_map("settings"))
    );
    assert_eq!(before.changed_in(&rotated), vec![secret("auth-secrets")]);
}

/// An optional reference to an absent key, to an absent object, and to an empty value are
/// three different states, each with its own digest, and none is a problem.
#[test]
fn absent_optional_sources_count_distinctly() {
    let env = vec![env_from_secret("EXTRA", "extra", "k", Some(true))];
    let digest = |o: Observed| {
        let out = digest_of(env.clone(), &BTreeMap::from([(secret("extra"), o)]));
        assert_eq!(out.problem, None);
        entry(&out.digest, &secret("extra"))
    };
    let no_object = digest(Observed::Missing);
    let no_key = digest(found(&[]));
    let empty = digest(found(&[("k", "")]));
    let set = digest(found(&[("k", "v")]));
    assert!(no_object.is_some());
    let all = [&no_object, &no_key, &empty, &set];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

/// A required Secret that is missing, or lacks a required key, keeps the entry of the previous
/// template (nothing rolls onto pods that could not start) and is reported as ConfigMissing;
/// without a previous entry it is counted as absent.
#[test]
fn missing_required_source_is_held_and_reported() {
    let sources = sources("auth", &spec_with(auth_env()));
    let before = compute(
        &sources,
        &auth_observed("k1", "fast"),
        &ConfigDigest::default(),
    )
    .digest;
    let mut gone = auth_observed("k1", "fast");
    gone.insert(secret("auth-secrets"), Observed::Missing);
    let out = compute(&sources, &gone, &before);
    assert_eq!(out.digest, before);
    let problem = out.problem.unwrap_or_else(|| panic!("a problem expected"));
    assert_eq!(problem.reason, "ConfigMissing");
    assert!(
        problem.message.contains("Secret auth-secrets"),
        "{problem:?}"
    );

    let mut no_key = auth_observed("k1", "fast");
    no_key.insert(secret("auth-secrets"), found(&[("admin-token", "t0k3n")]));
    let out = compute(&sources, &no_key, &before);
    assert_eq!(out.digest, before);
    let problem = out.problem.unwrap_or_else(|| panic!("a problem expected"));
    assert!(
        problem
            .message
            .contains("key signing-key of Secret auth-secrets"),
        "{problem:?}"
    );

    let first = compute(&sources, &gone, &ConfigDigest::default());
    assert!(entry(&first.digest, &secret("auth-secrets")).is_some());
    assert_eq!(first.problem.map(|p| p.reason), Some("ConfigMissing"));
}

/// A Secret the operator may not read keeps its previous entry, is left out when there is
/// none, and is reported as Forbidden; the readable sources still count.
#[test]
fn forbidden_source_is_held_and_reported() {
    let sources = sources("auth", &spec_with(auth_env()));
    let before = compute(
        &sources,
        &auth_observed("k1", "fast"),
        &ConfigDigest::default(),
    )
    .digest;
    let mut refused = auth_observed("k1", "slow");
    refused.insert(secret("auth-secrets"), Observed::Forbidden);
    let out = compute(&sources, &refused, &before);
    assert_eq!(
        entry(&out.digest, &secret("auth-secrets")),
        entry(&before, &secret("auth-secrets"))
    );
    assert_ne!(
        entry(&out.digest, &config_map("settings")),
        entry(&before, &config_map("settings"))
    );
    assert_eq!(out.problem.map(|p| p.reason), Some("Forbidden"));
    let first = compute(&sources, &refused, &ConfigDigest::default());
    assert_eq!(entry(&first.digest, &secret("auth-secrets")), None);
}

/// Stamping is deterministic (building and stamping twice gives equal Deployments), a new value
/// is a new template revision (so a guarded rollout analyses it as a release), and without a
/// digest (the feature off, or nothing referenced) there is no annotation at all.
#[test]
fn stamped_template_follows_the_values() {
    let v = validated("auth", spec_with(auth_env()));
    let op = OperatorInputs::default();
    let stamped = |signing_key: &str| {
        let sources = sources("auth", &v.spec);
        let out = compute(
            &sources,
            &auth_observed(signing_key, "fast"),
            &ConfigDigest::default(),
        );
        let mut d = build(&v, &op).deployment;
        stamp(&mut d, &out.digest);
        d
    };
    assert_eq!(stamped("k1"), stamped("k1"));
    let plain = build(&v, &op).deployment;
    assert_eq!(ConfigDigest::of_template(&plain), ConfigDigest::default());
    let mut unstamped = plain.clone();
    stamp(&mut unstamped, &ConfigDigest::default());
    assert_eq!(unstamped, plain);
    let one = stamped("k1");
    let two = stamped("k2");
    assert!(!ConfigDigest::of_template(&one).is_empty());
    assert_ne!(template_revision(&one), template_revision(&two));
    assert_ne!(template_revision(&one), template_revision(&plain));
    assert_eq!(
        ConfigDigest::of_template(&one).changed_in(&ConfigDigest::of_template(&two)),
        vec![secret("auth-secrets")]
    );
}

/// The Event names what changed; an object added to or dropped from `env` (a spec change) is not
/// a configuration change.
#[test]
fn announcement_names_changed_objects_only() {
    let before = ConfigDigest::parse("Secret/a:01,Secret/b:02");
    let after = ConfigDigest::parse("Secret/a:09,Secret/c:03");
    let changed = before.changed_in(&after);
    assert_eq!(changed, vec![secret("a")]);
    let note = announcement(&changed).unwrap_or_default();
    assert!(note.starts_with("Secret a changed"), "{note}");
    assert_eq!(announcement(&before.changed_in(&before)), None);
    assert_eq!(
        ConfigDigest::parse("Secret/a:01,nonsense,Pod/x:1"),
        ConfigDigest::parse("Secret/a:01")
    );
}
