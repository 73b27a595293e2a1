//! Checking that a traffic verdict comes from Flotilla's leading prober.
//!
//! A verdict changes how a pod treats every client (`ejected` closes persistent connections), so
//! a pod must not act on one that anybody who reaches its readiness path could send. Flotilla
//! signs each verdict with an Ed25519 key only its operator holds and injects the public keys
//! into the pods it runs (`FLOTILLA_VERDICT_KEYS`, beside `POD_NAME`). A verdict counts only
//! when its signature header verifies:
//!
//! ```text
//! Flotilla-Traffic: ejected
//! Flotilla-Verdict-Signature: v1.<kid>.<unix ms>.<base64url signature>
//! ```
//!
//! The signature covers `flotilla-verdict.v1\n<pod name>\n<verdict>\n<unix ms>`, so a verdict
//! for one pod is worthless at another, and a pod accepts it only when the time is within
//! [`MAX_SKEW`] of its own clock and not older than the newest verdict it already accepted (a
//! recorded `ejected` cannot be replayed after a newer `serving`). Only the leader's prober
//! sends verdicts. Public keys only: a compromised pod cannot sign verdicts for others.
//!
//! Pure apart from the clock the caller passes in; [`crate::traffic`] asks it before recording.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use prometheus::{IntCounterVec, Opts};

/// Request header carrying the verdict's signature (case-insensitive).
pub const SIGNATURE_HEADER: &str = "flotilla-verdict-signature";

/// Environment variable with the operator's public verdict keys: comma-separated
/// `<kid>:<base64url of the 32-byte Ed25519 public key>`.
pub const KEYS_ENV: &str = "FLOTILLA_VERDICT_KEYS";

/// Environment variable with the pod's own name (the downward API's `metadata.name`).
pub const POD_NAME_ENV: &str = "POD_NAME";

/// Version tag of the signature header and the signed text.
pub const VERSION: &str = "v1";

/// How far a verdict's time may be from the pod's clock. Clocks of a cluster's nodes are
/// NTP-synchronised to milliseconds; thirty seconds tolerate a badly drifting node while a
/// captured verdict goes stale soon after it stops being repeated.
pub const MAX_SKEW_MS: u64 = 30_000;

/// [`MAX_SKEW_MS`] as a duration, for documentation and tests.
pub const MAX_SKEW: std::time::Duration = std::time::Duration::from_millis(MAX_SKEW_MS);

/// The text a verdict's signature covers.
pub fn signed_text(pod: &str, verdict: &str, unix_ms: u64) -> String {
    format!("flotilla-verdict.{VERSION}\n{pod}\n{verdict}\n{unix_ms}")
}

/// What became of one verdict; the label of `flotilla_traffic_verdicts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Signed by a known key for this pod, fresh: acted on.
    Accepted,
    /// No signature header: ignored.
    Unsigned,
    /// The pod has no keys or does not know its name: every verdict is ignored.
    Unconfigured,
    /// The header does not parse.
    Malformed,
    /// Signed with a key the pod does not know (rotated away, or made up).
    UnknownKey,
    /// The signature does not verify for this pod and verdict.
    Forged,
    /// Its time is more than [`MAX_SKEW`] away from the pod's clock.
    Stale,
    /// Older than a verdict already accepted.
    Replayed,
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Unsigned => "unsigned",
            Self::Unconfigured => "unconfigured",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::Forged => "forged",
            Self::Stale => "stale",
            Self::Replayed => "replayed",
        }
    }
}

/// Why the configured keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// An entry is not `<kid>:<key>`, or the key is not a 32-byte Ed25519 public key.
    #[error("{KEYS_ENV}: entry {0:?} is not <kid>:<base64url Ed25519 public key>")]
    Entry(String),
}

/// The pod's verdict check: its name, the operator's public keys, and the newest accepted time.
#[derive(Debug)]
pub struct VerdictCheck {
    pod: Option<String>,
    keys: HashMap<String, VerifyingKey>,
    newest_ms: AtomicU64,
    counts: IntCounterVec,
}

impl VerdictCheck {
    /// A check for the pod `pod` trusting `keys` (the [`KEYS_ENV`] format).
    pub fn new(pod: Option<String>, keys: &str) -> Result<Self, KeysError> {
        let mut parsed = HashMap::new();
        for entry in keys.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || KeysError::Entry(entry.to_owned());
            let (kid, key) = entry.split_once(':').ok_or_else(bad)?;
            let bytes: [u8; 32] = URL_SAFE_NO_PAD
                .decode(key.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
            parsed.insert(kid.trim().to_owned(), key);
        }
        Ok(Self {
            pod: pod.filter(|p| !p.trim().is_empty()),
            keys: parsed,
            newest_ms: AtomicU64::new(0),
            counts: counter(),
        })
    }

    /// A check that trusts no key: every verdict is ignored (a pod Flotilla does not run).
    pub fn disabled() -> Self {
        Self {
            pod: None,
            keys: HashMap::new(),
            newest_ms: AtomicU64::new(0),
            counts: counter(),
        }
    }

    /// Reads [`POD_NAME_ENV`] and [`KEYS_ENV`]. Unset keys disable verdicts; keys that do not
    /// parse are an error, so a broken injection shows at start-up rather than as ignored
    /// verdicts.
    pub fn from_env() -> Result<Self, KeysError> {
        let keys = std::env::var(KEYS_ENV).unwrap_or_default();
        Self::new(std::env::var(POD_NAME_ENV).ok(), &keys)
    }

    /// Whether verdicts can be accepted at all.
    pub fn configured(&self) -> bool {
        self.pod.is_some() && !self.keys.is_empty()
    }

    /// `flotilla_traffic_verdicts_total{outcome}`, to register in the service's registry.
    pub fn counter(&self) -> IntCounterVec {
        self.counts.clone()
    }

    /// Checks `verdict` (lowercase) against its signature header at `now_ms` (Unix ms) and
    /// counts the outcome.
    pub fn check(&self, verdict: &str, signature: Option<&str>, now_ms: u64) -> Outcome {
        let outcome = self.judge(verdict, signature, now_ms);
        self.counts.with_label_values(&[outcome.label()]).inc();
        outcome
    }

    fn judge(&self, verdict: &str, signature: Option<&str>, now_ms: u64) -> Outcome {
        let Some(signature) = signature else {
            return Outcome::Unsigned;
        };
        let Some(pod) = self.pod.as_deref().filter(|_| !self.keys.is_empty()) else {
            return Outcome::Unconfigured;
        };
        let Some((kid, at, sig)) = parse(signature) else {
            return Outcome::Malformed;
        };
        let Some(key) = self.keys.get(kid) else {
            return Outcome::UnknownKey;
        };
        if key
            .verify_strict(signed_text(pod, verdict, at).as_bytes(), &sig)
            .is_err()
        {
            return Outcome::Forged;
        }
        if now_ms.abs_diff(at) > MAX_SKEW_MS {
            return Outcome::Stale;
        }
        // Accept only times at or after the newest accepted one: the prober repeats one
        // signature for a moment, and every new verdict carries a newer time.
        let mut newest = self.newest_ms.load(Ordering::Acquire);
        loop {
            if at < newest {
                return Outcome::Replayed;
            }
            match self.newest_ms.compare_exchange_weak(
                newest,
                at,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Outcome::Accepted,
                Err(seen) => newest = seen,
            }
        }
    }
}

fn counter() -> IntCounterVec {
    // The options and the one label are constant, so building cannot fail.
    IntCounterVec::new(
        Opts::new(
            "flotilla_traffic_verdicts_total",
            "Traffic verdicts received on readiness probes, by what became of them \
             (only accepted ones are acted on).",
        ),
        &["outcome"],
    )
    .unwrap_or_else(|_| unreachable!("constant metric options are valid"))
}

/// `v1.<kid>.<unix ms>.<signature>` → its parts.
fn parse(header: &str) -> Option<(&str, u64, Signature)> {
    let mut parts = header.trim().splitn(4, '.');
    if parts.next()? != VERSION {
        return None;
    }
    let kid = parts.next()?;
    let at = parts.next()?.parse().ok()?;
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(parts.next()?)
        .ok()?
        .try_into()
        .ok()?;
    Some((kid, at, Signature::from_bytes(&sig)))
}

/// The current time in Unix milliseconds.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Signing, for tests and tools that stand in for the operator's prober (the operator has its
/// own signer): the [`KEYS_ENV`] entry of a key and the header for a verdict.
pub mod testing {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::{signed_text, VERSION};

    /// A signing key with its key id.
    #[derive(Debug)]
    pub struct TestSigner {
        /// The key id.
        pub kid: String,
        key: SigningKey,
    }

    impl TestSigner {
        /// A signer for the 32-byte `seed`.
        pub fn new(kid: &str, seed: [u8; 32]) -> Self {
            Self {
                kid: kid.to_owned(),
                key: SigningKey::from_bytes(&seed),
            }
        }

        /// The `FLOTILLA_VERDICT_KEYS` entry for this key.
        pub fn keys_entry(&self) -> String {
            format!(
                "{}:{}",
                self.kid,
                URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes())
            )
        }

        /// The signature header for `verdict` sent to `pod` at `unix_ms`.
        pub fn header(&self, pod: &str, verdict: &str, unix_ms: u64) -> String {
            let sig = self.key.sign(signed_text(pod, verdict, unix_ms).as_bytes());
            format!(
                "{VERSION}.{}.{unix_ms}.{}",
                self.kid,
                URL_SAFE_NO_PAD.encode(sig.to_bytes())
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestSigner;
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn check(signer: &TestSigner) -> VerdictCheck {
        VerdictCheck::new(Some("users-0".into()), &signer.keys_entry()).expect("keys parse")
    }

    #[test]
    fn only_fresh_signed_verdicts_for_this_pod_are_accepted() {
        // A verdict is acted on only when the operator's key signed it for this very pod, its
        // time is near the pod's clock, and it is not older than one already accepted.
        let op = TestSigner::new("k1", [7; 32]);
        let other = TestSigner::new("k1", [8; 32]);
        let c = check(&op);
        let cases: Vec<(&str, Option<String>, u64, Outcome)> = vec![
            ("ejected", None, NOW, Outcome::Unsigned),
            ("ejected", Some("garbage".into()), NOW, Outcome::Malformed),
            (
                "ejected",
                Some(TestSigner::new("k9", [7; 32]).header("users-0", "ejected", NOW)),
                NOW,
                Outcome::UnknownKey,
            ),
            (
                "ejected",
                Some(other.header("users-0", "ejected", NOW)),
                NOW,
                Outcome::Forged,
            ),
            (
                "ejected",
                Some(op.header("users-1", "ejected", NOW)),
                NOW,
                Outcome::Forged,
            ),
            (
                "ejected",
                Some(op.header("users-0", "serving", NOW)),
                NOW,
                Outcome::Forged,
            ),
            (
                "ejected",
                Some(op.header("users-0", "ejected", NOW - MAX_SKEW_MS - 1)),
                NOW,
                Outcome::Stale,
            ),
            (
                "ejected",
                Some(op.header("users-0", "ejected", NOW + MAX_SKEW_MS + 1)),
                NOW,
                Outcome::Stale,
            ),
            (
                "ejected",
                Some(op.header("users-0", "ejected", NOW - 5)),
                NOW,
                Outcome::Accepted,
            ),
            (
                "ejected",
                Some(op.header("users-0", "ejected", NOW - 5)),
                NOW,
                Outcome::Accepted,
            ),
            (
                "serving",
                Some(op.header("users-0", "serving", NOW)),
                NOW,
                Outcome::Accepted,
            ),
            (
                "ejected",
                Some(op.header("users-0", "ejected", NOW - 5)),
                NOW + 10,
                Outcome::Replayed,
            ),
        ];
        for (i, (verdict, sig, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(c.check(verdict, sig.as_deref(), now), want, "case {i}");
        }
        assert_eq!(
            c.counter().with_label_values(&["accepted"]).get(),
            3,
            "accepted verdicts are counted"
        );
        assert_eq!(c.counter().with_label_values(&["forged"]).get(), 3);
    }

    #[test]
    fn a_pod_without_keys_or_name_ignores_signed_verdicts() {
        // Pods Flotilla did not configure (no keys, or no name to check against) act on nothing.
        let op = TestSigner::new("k1", [7; 32]);
        let header = op.header("users-0", "ejected", NOW);
        let no_keys = VerdictCheck::new(Some("users-0".into()), "").expect("empty is valid");
        assert_eq!(
            no_keys.check("ejected", Some(&header), NOW),
            Outcome::Unconfigured
        );
        let no_name = VerdictCheck::new(None, &op.keys_entry()).expect("keys parse");
        assert_eq!(
            no_name.check("ejected", Some(&header), NOW),
            Outcome::Unconfigured
        );
        assert!(VerdictCheck::disabled().check("ejected", None, NOW) == Outcome::Unsigned);
    }

    #[test]
    fn rotated_keys_are_all_trusted_and_bad_entries_are_refused() {
        // During a rotation pods trust the old and the new key; a malformed entry fails at start.
        let old = TestSigner::new("old", [1; 32]);
        let new = TestSigner::new("new", [2; 32]);
        let c = VerdictCheck::new(
            Some("p".into()),
            &format!("{}, {}", old.keys_entry(), new.keys_entry()),
        )
        .expect("keys parse");
        assert_eq!(
            c.check("ejected", Some(&old.header("p", "ejected", NOW)), NOW),
            Outcome::Accepted
        );
        assert_eq!(
            c.check("serving", Some(&new.header("p", "serving", NOW + 1)), NOW),
            Outcome::Accepted
        );
        for bad in ["nokid", "k:not-base64!", "k:AAAA"] {
            assert!(VerdictCheck::new(Some("p".into()), bad).is_err(), "{bad}");
        }
    }
}
