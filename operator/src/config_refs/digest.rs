//! The config digest: one short SHA-256 per referenced Secret or ConfigMap over the values of
//! its referenced keys, written into the pod template as `flotilla.rs/config-digest`. Pure: the
//! observed values and the previous digest go in, the next digest, the problem to report and
//! what changed come out. No client here.
//!
//! What counts, per object: its referenced keys in sorted order, each with its value, or a mark
//! saying the key is absent, or that the object is absent (both only for optional references,
//! on which a pod starts without the variable). Keys the `env` does not reference do not count,
//! so an unrelated key of a shared Secret changing rolls nothing.
//!
//! What is held: when an object a pod needs (a non-optional reference) is missing, or lacks a
//! needed key, or the operator may not read it (403), its entry keeps the value of the previous
//! template. Pods created now would fail to start, so the template is not changed on that
//! account; the problem is reported instead, and the object's return with the same data rolls
//! nothing.

use std::collections::BTreeMap;

use flotilla_crds::{annotations, reasons};
use k8s_openapi::api::apps::v1::Deployment;
use sha2::{Digest, Sha256};

use super::{label, Source, SourceKey, SourceKind};

/// Hex characters kept of each object's SHA-256 (64 bits: a change is never missed in practice).
const DIGEST_LEN: usize = 16;
/// The first bytes hashed, so that a change of this encoding is a change of every digest.
const ENCODING: &[u8] = b"flotilla-config-digest.v1\0";
/// Objects named in one status message at most; the rest are counted.
const MAX_NAMED: usize = 5;

/// What reading one referenced object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The object exists: the value of each referenced key (`None` when the key is absent).
    Found(BTreeMap<String, Option<Vec<u8>>>),
    /// The object does not exist.
    Missing,
    /// The API server refused to give it to the operator (403).
    Forbidden,
}

/// A digest per referenced object; the value of the `flotilla.rs/config-digest` annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDigest(BTreeMap<SourceKey, String>);

impl ConfigDigest {
    /// The digest as the annotation holds it: `Secret/<name>:<hex>` entries in kind and name
    /// order, comma-separated (object names cannot contain `/`, `:` or `,`); `None` when no
    /// object is referenced.
    pub fn annotation(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|((kind, name), hex)| format!("{}/{name}:{hex}", kind.as_str()))
            .collect();
        Some(entries.join(","))
    }

    /// The digest an annotation holds; entries that do not parse are left out.
    pub fn parse(value: &str) -> Self {
        let entries = value.split(',').filter_map(|entry| {
            let (object, hex) = entry.trim().rsplit_once(':')?;
            let (kind, name) = object.split_once('/')?;
            let kind = SourceKind::parse(kind)?;
            (!name.is_empty() && !hex.is_empty()).then(|| ((kind, name.to_string()), hex.into()))
        });
        Self(entries.collect())
    }

    /// The digest in the pod template of `d`, empty when it has none.
    pub fn of_template(d: &Deployment) -> Self {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(annotations::CONFIG_DIGEST))
            .map_or_else(Self::default, |v| Self::parse(v))
    }

    /// Whether no object is referenced.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The objects whose digest differs between `self` (the previous template) and `next`; an
    /// object only one of them references is a change of the spec, not of configuration, and
    /// is not listed.
    pub fn changed_in(&self, next: &ConfigDigest) -> Vec<SourceKey> {
        next.0
            .iter()
            .filter(|(key, hex)| self.0.get(*key).is_some_and(|before| before != *hex))
            .map(|(key, _)| key.clone())
            .collect()
    }
}

/// A referenced object that could not be used, to report as `Degraded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceProblem {
    /// `ConfigMissing` or `Forbidden`.
    pub reason: &'static str,
    /// What is missing or refused, for a person.
    pub message: String,
}

/// The next digest and what is wrong with the sources, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The digest for the pod template.
    pub digest: ConfigDigest,
    /// A missing or unreadable source whose entry was held.
    pub problem: Option<SourceProblem>,
}

/// The digest of `sources` from what was `observed` of each, holding the `previous` entry of an
/// object a pod needs but that is missing or unreadable.
pub fn compute(
    sources: &[Source],
    observed: &BTreeMap<SourceKey, Observed>,
    previous: &ConfigDigest,
) -> Outcome {
    let mut digest = BTreeMap::new();
    let mut missing = Vec::new();
    let mut forbidden = Vec::new();
    for source in sources {
        let key = source.key();
        let held = previous.0.get(&key).cloned();
        let entry = match observed.get(&key).unwrap_or(&Observed::Forbidden) {
            Observed::Found(values) => {
                let absent: Vec<&String> = source
                    .keys
                    .iter()
                    .filter(|(k, required)| {
                        **required && values.get(*k).is_none_or(Option::is_none)
                    })
                    .map(|(k, _)| k)
                    .collect();
                let fresh = hash(source, Some(values));
                if absent.is_empty() {
                    Some(fresh)
                } else {
                    let keys: Vec<&str> = absent.iter().map(|k| k.as_str()).collect();
                    missing.push(format!("key {} of {}", keys.join(", "), source.label()));
                    held.or(Some(fresh))
                }
            }
            Observed::Missing if source.required() => {
                missing.push(source.label());
                held.or_else(|| Some(hash(source, None)))
            }
            Observed::Missing => Some(hash(source, None)),
            Observed::Forbidden => {
                forbidden.push(source.label());
                held
            }
        };
        if let Some(hex) = entry {
            digest.insert(key, hex);
        }
    }
    Outcome {
        digest: ConfigDigest(digest),
        problem: problem(&missing, &forbidden),
    }
}

/// The problem to report: a missing source first (pods would fail on it), else a refused one.
fn problem(missing: &[String], forbidden: &[String]) -> Option<SourceProblem> {
    let some_missing = (!missing.is_empty()).then(|| SourceProblem {
        reason: reasons::CONFIG_MISSING,
        message: format!(
            "env references {} without optional: true, which does not exist; pods started now \
             would fail, so the pod template keeps its config digest until it is back",
            names(missing)
        ),
    });
    some_missing.or_else(|| {
        (!forbidden.is_empty()).then(|| SourceProblem {
            reason: reasons::FORBIDDEN,
            message: format!(
                "the operator may not get {} (403), so changes to it cannot roll the pods; \
                 grant it get, list and watch on them (for Secrets: the chart's \
                 operator.configRollouts.enabled)",
                names(forbidden)
            ),
        })
    })
}

/// Up to [`MAX_NAMED`] names, then how many more.
fn names(all: &[String]) -> String {
    let shown: Vec<&str> = all.iter().take(MAX_NAMED).map(String::as_str).collect();
    match all.len().saturating_sub(MAX_NAMED) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// The digest of one object: its referenced keys in order, each with its value or a mark for
/// an absent key (`values` given) or an absent object (`values` is `None`).
fn hash(source: &Source, values: Option<&BTreeMap<String, Option<Vec<u8>>>>) -> String {
    let mut h = Sha256::new();
    h.update(ENCODING);
    for key in source.keys.keys() {
        h.update((key.len() as u64).to_be_bytes());
        h.update(key.as_bytes());
        match values.map(|v| v.get(key).and_then(Option::as_ref)) {
            Some(Some(value)) => {
                h.update([1]);
                h.update((value.len() as u64).to_be_bytes());
                h.update(value);
            }
            Some(None) => h.update([2]),
            None => h.update([3]),
        }
    }
    let hex = hex::encode(h.finalize());
    hex[..DIGEST_LEN].to_string()
}

/// Puts `digest` into the pod template of `d` (nothing when no object is referenced).
pub fn stamp(d: &mut Deployment, digest: &ConfigDigest) {
    let Some(value) = digest.annotation() else {
        return;
    };
    if let Some(spec) = d.spec.as_mut() {
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(annotations::CONFIG_DIGEST.to_string(), value);
    }
}

/// The Event note announcing that `changed` objects changed, or `None` when none did.
pub fn announcement(changed: &[SourceKey]) -> Option<String> {
    if changed.is_empty() {
        return None;
    }
    let labels: Vec<String> = changed.iter().map(label).collect();
    Some(format!(
        "{} changed: a value the pods read through env is new, so the pod template changes and \
         the pods roll",
        names(&labels)
    ))
}

#[cfg(test)]
#[path = "digest_tests.rs"]
mod tests;
