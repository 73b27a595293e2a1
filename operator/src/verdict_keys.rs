//! The keys that make traffic verdicts authentic.
//!
//! A pod acts on a `flotilla-traffic` verdict only when it carries a signature by one of the
//! operator's Ed25519 keys over the pod's name, the verdict and the time (see
//! `flotilla_crds::traffic::SIGNATURE_HEADER` and `services/README.md`). The private key stays
//! in the operator (mounted from a Secret the chart generates); the public keys go into every
//! managed container as `FLOTILLA_VERDICT_KEYS`, so pods can verify but never sign.
//!
//! Rotation: the admin adds a *next* key, which pods are given to trust beside the current one
//! (one rollout of the fleet); then makes it current (signing switches, nothing rolls); the old
//! key leaves the published list with the next template change.
//!
//! No client here; loading reads files, signing reads the clock.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest, Sha256};

/// The DER prefix of a PKCS#8 (RFC 8410) Ed25519 private key; the 32-byte seed follows.
/// This is what `openssl genpkey -algorithm ed25519` and Helm's `genPrivateKey "ed25519"` write.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why a verdict key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("reading verdict key {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a PEM `PRIVATE KEY` holding an Ed25519 key.
    #[error("verdict key {path}: not a PEM PKCS#8 Ed25519 private key ({why})")]
    Format {
        /// The file.
        path: String,
        /// What was wrong.
        why: &'static str,
    },
}

/// The operator's verdict signing key and the public keys pods trust.
pub struct VerdictKeys {
    signing: SigningKey,
    kid: String,
    published: String,
    /// The last time (Unix ms) put into a signature: each signature gets a later one, so a pod
    /// can refuse anything older than what it accepted.
    last_ms: AtomicU64,
}

impl fmt::Debug for VerdictKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerdictKeys")
            .field("kid", &self.kid)
            .field("published", &self.published)
            .finish_non_exhaustive()
    }
}

impl PartialEq for VerdictKeys {
    fn eq(&self, other: &Self) -> bool {
        self.kid == other.kid && self.published == other.published
    }
}

impl VerdictKeys {
    /// Signs with `current`; pods also trust `next` (a rotation in progress).
    pub fn new(current: SigningKey, next: Option<&SigningKey>) -> Self {
        let kid = kid_of(&current);
        let mut published = entry(&kid, &current);
        if let Some(n) = next.filter(|n| kid_of(n) != kid) {
            published.push(',');
            published.push_str(&entry(&kid_of(n), n));
        }
        Self {
            signing: current,
            kid,
            published,
            last_ms: AtomicU64::new(0),
        }
    }

    /// A key made up once per process. Enough for one replica; with several, every replica
    /// would sign with its own key, so the chart always mounts a shared one. Made once, not per
    /// call, so an operator restarted inside the same process (the library's callers do) keeps
    /// its key and does not roll every pod.
    pub fn ephemeral() -> Self {
        static SEED: OnceLock<[u8; 32]> = OnceLock::new();
        let seed = SEED.get_or_init(rand::random::<[u8; 32]>);
        Self::new(SigningKey::from_bytes(seed), None)
    }

    /// Loads the current key and, during a rotation, the next one, from PEM files.
    pub fn from_files(current: &Path, next: Option<&Path>) -> Result<Self, KeyError> {
        let current = read_key(current)?;
        let next = next.map(read_key).transpose()?;
        Ok(Self::new(current, next.as_ref()))
    }

    /// The id of the signing key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `FLOTILLA_VERDICT_KEYS` value: every public key pods should trust.
    pub fn published(&self) -> &str {
        &self.published
    }

    /// The signature header for `verdict` sent to the pod named `pod` now.
    pub fn sign(&self, pod: &str, verdict: &str) -> String {
        let now = unix_ms_now();
        let mut last = self.last_ms.load(Ordering::Acquire);
        let at = loop {
            let at = now.max(last.saturating_add(1));
            match self
                .last_ms
                .compare_exchange_weak(last, at, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break at,
                Err(seen) => last = seen,
            }
        };
        self.sign_at(pod, verdict, at)
    }

    /// The signature header for `verdict` sent to `pod` at `unix_ms` (tests).
    pub fn sign_at(&self, pod: &str, verdict: &str, unix_ms: u64) -> String {
        let text = format!("flotilla-verdict.v1\n{pod}\n{verdict}\n{unix_ms}");
        let sig = self.signing.sign(text.as_bytes());
        format!(
            "v1.{}.{unix_ms}.{}",
            self.kid,
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        )
    }
}

fn kid_of(key: &SigningKey) -> String {
    hex::encode(&Sha256::digest(key.verifying_key().as_bytes())[..6])
}

fn entry(kid: &str, key: &SigningKey) -> String {
    format!(
        "{kid}:{}",
        URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())
    )
}

fn read_key(path: &Path) -> Result<SigningKey, KeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_pem(&text).map_err(|why| KeyError::Format { path: shown, why })
}

/// Parses a PEM `PRIVATE KEY` block holding a PKCS#8 Ed25519 key.
pub fn parse_pem(text: &str) -> Result<SigningKey, &'static str> {
    let body = text
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END PRIVATE KEY-----").next())
        .ok_or("no PRIVATE KEY block")?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD.decode(b64).map_err(|_| "invalid base64")?;
    let seed: [u8; 32] = der
        .strip_prefix(&PKCS8_ED25519_PREFIX[..])
        .ok_or("not an Ed25519 key")?
        .try_into()
        .map_err(|_| "unexpected length")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` as a PEM PKCS#8 `PRIVATE KEY` block (tests and tools).
pub fn to_pem(key: &SigningKey) -> String {
    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    )
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signature, Verifier as _};

    use super::*;

    #[test]
    fn pem_round_trips_and_openssl_keys_parse() {
        // A key written by openssl (RFC 8410 PKCS#8) loads to the same seed it holds.
        let openssl = "-----BEGIN PRIVATE KEY-----\n\
                       MC4CAQAwBQYDK2VwBCIEILiwmyaBA8tAhncujETvnQIxPxFpNuQ18eAb3jRvgsH9\n\
                       -----END PRIVATE KEY-----\n";
        let key = parse_pem(openssl).expect("openssl's key parses");
        assert_eq!(parse_pem(&to_pem(&key)).expect("round trip"), key);
        assert!(parse_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").is_err());
        assert!(parse_pem("nothing").is_err());
    }

    #[test]
    fn signatures_verify_with_the_published_key_and_times_increase() {
        // What the operator signs verifies with the key it publishes, over pod, verdict and
        // time; two signatures never share a time, so pods can refuse older ones.
        let keys = VerdictKeys::new(SigningKey::from_bytes(&[5; 32]), None);
        let a = keys.sign("users-0", "ejected");
        let b = keys.sign("users-0", "serving");
        let parts: Vec<&str> = a.splitn(4, '.').collect();
        assert_eq!(parts[..2], ["v1", keys.kid()]);
        let at: u64 = parts[2].parse().expect("time");
        let tb: u64 = b
            .split('.')
            .nth(2)
            .and_then(|t| t.parse().ok())
            .expect("time");
        assert!(tb > at);
        let sig: [u8; 64] = URL_SAFE_NO_PAD
            .decode(parts[3])
            .expect("base64")
            .try_into()
            .expect("64 bytes");
        let (kid, key) = keys.published().split_once(':').expect("kid:key");
        assert_eq!(kid, keys.kid());
        let pubkey: [u8; 32] = URL_SAFE_NO_PAD
            .decode(key)
            .expect("base64")
            .try_into()
            .expect("32 bytes");
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&pubkey).expect("key");
        let text = format!("flotilla-verdict.v1\nusers-0\nejected\n{at}");
        assert!(vk
            .verify(text.as_bytes(), &Signature::from_bytes(&sig))
            .is_ok());
        let other = format!("flotilla-verdict.v1\nusers-1\nejected\n{at}");
        assert!(vk
            .verify(other.as_bytes(), &Signature::from_bytes(&sig))
            .is_err());
    }

    #[test]
    fn a_next_key_is_published_but_not_used() {
        // During a rotation pods trust both keys while the current one still signs.
        let cur = SigningKey::from_bytes(&[1; 32]);
        let next = SigningKey::from_bytes(&[2; 32]);
        let keys = VerdictKeys::new(cur.clone(), Some(&next));
        assert_eq!(keys.published().split(',').count(), 2);
        assert_eq!(keys.kid(), kid_of(&cur));
        assert_eq!(
            VerdictKeys::new(cur.clone(), Some(&cur)).published(),
            VerdictKeys::new(cur, None).published(),
            "the same key twice is published once"
        );
    }
}
