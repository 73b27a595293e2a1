//! Bearer credentials: reading `Authorization: Bearer <token>` and comparing a presented
//! token with a configured one in constant time (no early exit on the first differing byte,
//! so response timing does not reveal how much of a guess was right).

/// Service credential auth presents to users in developer mode (`--dev` in both). Public, so it
/// proves nothing; refused as a configured `USERS_SERVICE_TOKEN` (it reads as a placeholder).
pub const DEV_SERVICE_TOKEN: &str = "flotilla-dev-service-token-do-not-use";

/// The token of an `Authorization: Bearer <token>` header value, trimmed.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether the header carries exactly `token` as its bearer token.
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    bearer(header).is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Equality in time independent of where the inputs differ (their lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_matches() {
        // A prefix, a longer token, another scheme or an empty bearer never matches.
        assert!(bearer_matches(Some("Bearer abc"), "abc"));
        assert!(bearer_matches(Some("Bearer  abc "), "abc"));
        assert!(!bearer_matches(Some("Bearer abd"), "abc"));
        assert!(!bearer_matches(Some("Bearer ab"), "abc"));
        assert!(!bearer_matches(Some("Bearer abcd"), "abc"));
        assert!(!bearer_matches(Some("Basic abc"), "abc"));
        assert!(!bearer_matches(Some("abc"), "abc"));
        assert!(!bearer_matches(Some("Bearer "), ""));
        assert!(!bearer_matches(None, "abc"));
    }
}
