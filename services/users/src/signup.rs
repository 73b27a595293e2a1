//! Limits of sign-up (`POST /users`), the one route anyone may call that hashes a password:
//! attempts a minute per client address and for the whole service, checked before the body is
//! parsed or hashed. With its own hashing slots (see [`crate::password`]) this keeps a sign-up
//! flood from starving auth's credential checks. Pure token buckets; no HTTP here.

use std::net::IpAddr;

use flotilla_kit::ratelimit::{Limited, RateLimiter};

/// Default sign-ups a minute per client address.
pub const DEFAULT_PER_ADDRESS: u32 = 5;

/// Default sign-ups a minute for the whole service (each pod counts its own).
pub const DEFAULT_GLOBAL: u32 = 60;

/// Key of the single bucket the global limit uses.
const GLOBAL_KEY: &str = "*";

/// Sign-up limits: per client address and global, each in attempts a minute (0 disables).
#[derive(Debug, Clone)]
pub struct SignupLimits {
    address: RateLimiter,
    global: RateLimiter,
}

impl Default for SignupLimits {
    fn default() -> Self {
        Self::new(DEFAULT_PER_ADDRESS, DEFAULT_GLOBAL)
    }
}

impl SignupLimits {
    /// `per_address` and `global` sign-ups a minute, in bursts of as many.
    pub fn new(per_address: u32, global: u32) -> Self {
        Self {
            address: RateLimiter::per_minute(per_address),
            global: RateLimiter::per_minute(global),
        }
    }

    /// Spends one attempt: the address first, so one noisy client is stopped by its own limit
    /// before it spends the global budget everyone shares.
    pub fn check(&self, peer: Option<IpAddr>) -> Result<(), Limited> {
        if let Some(ip) = peer {
            self.address.check(&ip.to_string())?;
        }
        self.global.check(GLOBAL_KEY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_is_stopped_by_its_own_limit_and_everyone_by_the_global_one() {
        // An address past its limit is refused while others still pass; past the global limit
        // everyone is refused, with a wait to report.
        let limits = SignupLimits::new(2, 3);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        assert!(limits.check(a).is_ok());
        assert!(limits.check(a).is_ok());
        assert!(limits.check(a).is_err());
        assert!(limits.check(b).is_ok());
        let refused = limits.check(b).expect_err("global limit");
        assert!(refused.retry_after.as_secs_f64() > 0.0);
        assert!(SignupLimits::new(0, 0).check(a).is_ok());
    }
}
