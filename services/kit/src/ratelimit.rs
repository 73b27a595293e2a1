//! Per-key rate limits (token buckets) for password-guessing targets such as a login route:
//! each key — an account, a client address — may spend `per_minute` attempts a minute, in
//! bursts of up to `per_minute`. A refused attempt learns how long to wait (`Retry-After`).
//!
//! Memory is bounded: at most [`MAX_KEYS`] keys are tracked; when the table is full, keys whose
//! bucket has refilled (idle ones) are dropped first, and if every key is active the table is
//! reset, which briefly forgets limits rather than growing without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most keys tracked per limiter.
pub const MAX_KEYS: usize = 10_000;

/// A refused attempt: wait this long before the next one can pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Time until one attempt is available again.
    pub retry_after: Duration,
}

/// A token-bucket limiter keyed by string; cheap to clone, shared state.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_minute` attempts a minute per key; 0 disables the limit.
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Arc::default(),
        }
    }

    fn rate_per_sec(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    /// Spends one attempt for `key` at `now`, or says how long to wait.
    pub fn check_at(&self, key: &str, now: Instant) -> Result<(), Limited> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let rate = self.rate_per_sec();
        let mut buckets = match self.buckets.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < capacity
            });
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let refilled = (bucket.tokens
            + now.saturating_duration_since(bucket.at).as_secs_f64() * rate)
            .min(capacity);
        bucket.at = now;
        if refilled >= 1.0 {
            bucket.tokens = refilled - 1.0;
            Ok(())
        } else {
            bucket.tokens = refilled;
            Err(Limited {
                retry_after: Duration::from_secs_f64((1.0 - refilled) / rate),
            })
        }
    }

    /// [`Self::check_at`] now.
    pub fn check(&self, key: &str) -> Result<(), Limited> {
        self.check_at(key, Instant::now())
    }
}

/// The two limits of a credential check: per account and per client address.
#[derive(Debug, Clone)]
pub struct CredentialLimits {
    /// Attempts per account (normalised email).
    pub account: RateLimiter,
    /// Attempts per client IP address.
    pub address: RateLimiter,
}

impl CredentialLimits {
    /// Limits of `per_account` and `per_address` attempts a minute (0 = unlimited).
    pub fn new(per_account: u32, per_address: u32) -> Self {
        Self {
            account: RateLimiter::per_minute(per_account),
            address: RateLimiter::per_minute(per_address),
        }
    }

    /// Spends one attempt against both limits; the address is checked first so a client
    /// spraying many accounts is stopped by its own address.
    pub fn check(&self, account: &str, address: Option<std::net::IpAddr>) -> Result<(), Limited> {
        if let Some(ip) = address {
            self.address.check(&ip.to_string())?;
        }
        self.account.check(&account.trim().to_lowercase())
    }
}

/// A 429 JSON error with `Retry-After` in whole seconds (at least 1).
pub fn too_many(limited: Limited) -> warp::reply::Response {
    use warp::Reply;
    let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    warp::reply::with_header(
        crate::reply::error(
            warp::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many attempts, retry in {secs} s"),
        ),
        "retry-after",
        secs.to_string(),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        // A key gets `per_minute` attempts at once, then one more each 60/per_minute s; other
        // keys are unaffected.
        let l = RateLimiter::per_minute(6);
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(l.check_at("ada", t0).is_ok());
        }
        let refused = l.check_at("ada", t0).expect_err("limited");
        assert_eq!(refused.retry_after.as_secs_f64().round(), 10.0);
        assert!(l.check_at("bob", t0).is_ok());
        assert!(l.check_at("ada", t0 + Duration::from_secs(10)).is_ok());
        assert!(l.check_at("ada", t0 + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn zero_disables_and_the_table_stays_bounded() {
        // 0 means no limit; many distinct keys never grow the table past MAX_KEYS.
        let off = RateLimiter::per_minute(0);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(off.check_at("x", t0).is_ok());
        }
        let l = RateLimiter::per_minute(1);
        for i in 0..(MAX_KEYS + 50) {
            let _ = l.check_at(&i.to_string(), t0);
        }
        assert!(l.buckets.lock().map(|b| b.len()).unwrap_or(0) <= MAX_KEYS);
    }

    #[test]
    fn accounts_are_normalised_and_addresses_limited_first() {
        // "Ada@X" and "ada@x" share a bucket; an address over its limit is refused whatever
        // the account.
        let limits = CredentialLimits::new(2, 3);
        let ip: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
        assert!(limits.check("Ada@x.io", Some(ip)).is_ok());
        assert!(limits.check("ada@x.io ", Some(ip)).is_ok());
        assert!(limits.check("ada@x.io", None).is_err());
        assert!(limits.check("bob@x.io", Some(ip)).is_ok());
        assert!(limits.check("eve@x.io", Some(ip)).is_err(), "address limit");
    }
}
