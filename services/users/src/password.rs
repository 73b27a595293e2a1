//! Password hashing with Argon2id. Hashing is CPU-heavy by design, so it runs on the
//! blocking thread pool, never on the async workers that serve other requests.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Hashing failed (never a wrong password: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The hasher itself failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task was cancelled or panicked.
    #[error("password hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Every hashing slot of this kind of request is taken; the caller should retry shortly.
    #[error("too many password checks in progress, retry shortly")]
    Busy,
}

/// Default concurrent credential checks: 2 × 19 MiB.
pub const DEFAULT_CONCURRENCY: usize = 2;

/// Default concurrent hashes of new passwords (sign-up, password change): 1 × 19 MiB, so with
/// the checks' slots 3 × 19 MiB stays well inside a 128 MiB container limit.
pub const DEFAULT_CHANGE_CONCURRENCY: usize = 1;

/// Hashes and verifies passwords with fixed Argon2id parameters: each hash takes 19 MiB, so
/// unbounded parallel requests could exhaust the pod's memory. Credential checks (auth's
/// logins) and new passwords (sign-up, which anyone may call, and password changes) draw on
/// separate slots, so a sign-up flood cannot take the slots logins need. A request that finds
/// every slot of its kind taken fails at once with [`PasswordError::Busy`] (the API answers
/// 503 with `Retry-After`) instead of queueing.
#[derive(Debug, Clone)]
pub struct Passwords {
    params: Params,
    // Credential checks ([`Passwords::verify`]).
    slots: Arc<Semaphore>,
    // New passwords ([`Passwords::hash`]).
    change_slots: Arc<Semaphore>,
    // A hash verified against when an email is unknown so that
    // "no such user" and "wrong password" take the same time.
    dummy: String,
}

impl Passwords {
    /// Argon2id with the crate's recommended parameters (19 MiB, 2 passes).
    pub fn new() -> Result<Self, PasswordError> {
        Self::with_params(Params::default())
    }

    /// Minimal-cost parameters for tests and benchmarks, where hashing speed matters more
    /// than resistance to offline cracking. Never used by the binary.
    pub fn low_cost() -> Result<Self, PasswordError> {
        let params = Params::new(Params::MIN_M_COST, 1, 1, None)
            .map_err(|e| PasswordError::Hash(e.to_string()))?;
        Self::with_params(params)
    }

    fn with_params(params: Params) -> Result<Self, PasswordError> {
        // The dummy's password is irrelevant: a verify against it is always reported false.
        let dummy = hash_with(&params, b"flotilla-dummy-password")?;
        Ok(Self {
            params,
            slots: Arc::new(Semaphore::new(DEFAULT_CONCURRENCY)),
            change_slots: Arc::new(Semaphore::new(DEFAULT_CHANGE_CONCURRENCY)),
            dummy,
        })
    }

    /// The same hasher allowing `n` (at least 1) credential checks at once.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.slots = Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)));
        self
    }

    /// The same hasher allowing `n` (at least 1) new-password hashes at once.
    pub fn with_change_concurrency(mut self, n: usize) -> Self {
        self.change_slots = Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)));
        self
    }

    fn slot(&self) -> Result<OwnedSemaphorePermit, PasswordError> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| PasswordError::Busy)
    }

    fn change_slot(&self) -> Result<OwnedSemaphorePermit, PasswordError> {
        self.change_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| PasswordError::Busy)
    }

    /// Hashes a new `password` to a PHC string, on the new-password slots.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let params = self.params.clone();
        let slot = self.change_slot()?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            hash_with(&params, password.as_bytes())
        })
        .await?
    }

    /// Verifies `password` against `stored`, or against a dummy hash when `stored` is `None`,
    /// on the credential checks' slots.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy.clone());
        let slot = self.slot()?;
        let ok = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let parsed = PasswordHash::new(&phc).map_err(|e| PasswordError::Hash(e.to_string()))?;
            Ok::<_, PasswordError>(
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
            )
        })
        .await??;
        Ok(known && ok)
    }
}

fn hash_with(params: &Params, password: &[u8]) -> Result<String, PasswordError> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        // The right password verifies, a wrong one does not, an unknown user never does.
        let p = Passwords::low_cost().expect("params");
        let h = p.hash("correct horse".into()).await.expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("correct horse"));
        assert!(p
            .verify("correct horse".into(), Some(h.clone()))
            .await
            .expect("verify"));
        assert!(!p
            .verify("wrong horse".into(), Some(h))
            .await
            .expect("verify"));
        assert!(!p.verify("anything".into(), None).await.expect("verify"));
    }

    #[tokio::test]
    async fn hashing_is_bounded_and_busy_when_full() {
        // With every slot of a kind taken a further request of that kind fails at once as
        // Busy instead of queueing, and succeeds again once a slot is free.
        let p = Passwords::low_cost().expect("params").with_concurrency(1);
        let held = p.slot().expect("free slot");
        assert!(matches!(
            p.verify("x".into(), None).await,
            Err(PasswordError::Busy)
        ));
        drop(held);
        let held = p.change_slot().expect("free slot");
        assert!(matches!(
            p.hash("correct horse".into()).await,
            Err(PasswordError::Busy)
        ));
        drop(held);
        assert!(p.hash("correct horse".into()).await.is_ok());
    }

    #[tokio::test]
    async fn new_passwords_never_take_the_credential_checks_slots() {
        // Sign-ups holding every new-password slot leave credential checks their own slots.
        let p = Passwords::low_cost().expect("params").with_concurrency(1);
        let _signups = p.change_slot().expect("free slot");
        assert!(matches!(
            p.hash("correct horse".into()).await,
            Err(PasswordError::Busy)
        ));
        assert!(!p
            .verify("x".into(), None)
            .await
            .expect("a check's own slot"));
    }
}
