//! Stable short hashes for generated names: `pod-template-hash` and per-object suffixes.
//!
//! The real controller hashes the pod template with FNV-32a and encodes the decimal digits of the
//! hash with the "safe" alphabet that avoids vowels and look-alike characters; kubesim does the
//! same over the template's canonical JSON, so values have the familiar shape (`5d8f7b9c4`).

use serde_json::Value;

const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Maps every byte of `s` into the safe alphabet, as Kubernetes' `rand.SafeEncodeString`.
pub fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// JSON with object keys sorted at every level, so equal values hash equally.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let body: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Value::Array(items) => {
            let body: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", body.join(","))
        }
        other => other.to_string(),
    }
}

/// The value with nulls, empty objects and empty arrays removed at every level: the API
/// machinery's semantic equality treats nil and empty alike, and so must template comparison.
pub fn semantic(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), semantic(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(semantic).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The hash of any serialisable value (a pod template), with an optional collision count.
/// Semantically equal values (see [`semantic`]) hash equally.
pub fn template_hash<T: serde::Serialize>(template: &T, collision_count: Option<i32>) -> String {
    let value = semantic(&serde_json::to_value(template).unwrap_or(Value::Null));
    let mut bytes = canonical(&value).into_bytes();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// A short (5 character) suffix derived from `seed`, for names the controllers own.
pub fn short_suffix(seed: &str) -> String {
    safe_encode(&fnv32a(seed.as_bytes()).to_string())
        .chars()
        .take(5)
        .collect()
}

/// A random 5 character suffix in the safe alphabet, like `generateName` produces.
pub fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| char::from(SAFE_ALPHABET[rng.random_range(0..SAFE_ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_hash() {
        // Two templates that differ only in key order are the same template.
        let a = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": [1, 2]}});
        let b = json!({"spec": {"x": [1, 2]}, "metadata": {"labels": {"b": "2", "a": "1"}}});
        assert_eq!(template_hash(&a, None), template_hash(&b, None));
    }

    #[test]
    fn nil_and_empty_are_the_same_template() {
        // `annotations: {}` or `args: null` must not start a rollout.
        let a =
            json!({"metadata": {"labels": {"a": "1"}, "annotations": {}}, "spec": {"args": null}});
        let b = json!({"metadata": {"labels": {"a": "1"}}, "spec": {}});
        assert_eq!(template_hash(&a, None), template_hash(&b, None));
        assert_eq!(semantic(&a), semantic(&b));
    }

    #[test]
    fn changes_and_collisions_change_the_hash() {
        // A changed template or a bumped collision count must yield a new ReplicaSet name.
        let a = json!({"spec": {"image": "x:1"}});
        let b = json!({"spec": {"image": "x:2"}});
        assert_ne!(template_hash(&a, None), template_hash(&b, None));
        assert_ne!(template_hash(&a, None), template_hash(&a, Some(1)));
        assert!(template_hash(&a, None)
            .bytes()
            .all(|c| SAFE_ALPHABET.contains(&c)));
    }
}
