//! Token issuing and checking: HS256 JWTs with subject, role, issuer, issue and expiry times.
//! auth issues them; users (and orders) verify them with the same secret. Pure apart from
//! reading the clock; the secret comes from configuration.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `iss` claim of every token.
pub const ISSUER: &str = "flotilla-auth";

/// Signing secret of developer mode (`--dev`) in auth and users. Public, so tokens signed with
/// it prove nothing; refused as a configured `JWT_SECRET` (it reads as a placeholder).
pub const DEV_SECRET: &str = "flotilla-dev-secret-do-not-use-in-production";

/// Clock skew tolerated when checking `exp`.
const LEEWAY_SECS: u64 = 5;

/// What a token's holder may do in the users API beyond their own account.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Their own account only.
    #[default]
    User,
    /// Every account.
    Admin,
}

/// Claims carried by a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id, as a string (JWT convention).
    pub sub: String,
    /// The holder's role; tokens without one are plain users.
    #[serde(default)]
    pub role: Role,
    /// Issuer, always [`ISSUER`].
    pub iss: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is past its `exp`.
    #[error("token expired")]
    Expired,
    /// Bad signature, wrong algorithm or issuer, or not a JWT at all.
    #[error("invalid token")]
    Invalid,
    /// Signing failed.
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// Issues and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens signed with `secret`, valid for `ttl`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// Lifetime of issued tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a plain user's token for `user_id` now.
    pub fn issue(&self, user_id: i64) -> Result<(String, Claims), TokenError> {
        self.issue_as(user_id, Role::User)
    }

    /// Issues a token for `user_id` with `role` now.
    pub fn issue_as(&self, user_id: i64, role: Role) -> Result<(String, Claims), TokenError> {
        self.issue_at(user_id, role, jsonwebtoken::get_current_timestamp())
    }

    /// Issues a token as if the time were `now` (Unix seconds).
    pub fn issue_at(
        &self,
        user_id: i64,
        role: Role,
        now: u64,
    ) -> Result<(String, Claims), TokenError> {
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        Ok((token, claims))
    }

    /// Checks signature, algorithm, issuer and expiry; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(600),
        )
    }

    #[test]
    fn issued_tokens_verify() {
        // A fresh token round-trips to the same claims.
        let t = tokens();
        let (token, claims) = t.issue(42).expect("sign");
        assert_eq!(t.verify(&token), Ok(claims.clone()));
        assert_eq!(claims.sub, "42");
        assert_eq!(claims.exp - claims.iat, 600);
        let (admin, _) = t.issue_as(1, Role::Admin).expect("sign");
        assert_eq!(t.verify(&admin).map(|c| c.role), Ok(Role::Admin));
    }

    #[test]
    fn tokens_without_a_role_are_plain_users() {
        // A token issued before roles existed (no `role` claim) grants no admin rights.
        let t = tokens();
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let payload = serde_json::json!({"sub": "3", "iss": ISSUER, "iat": 0, "exp": exp});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &payload,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .expect("sign");
        assert_eq!(t.verify(&token).map(|c| c.role), Ok(Role::User));
    }

    #[test]
    fn tampered_and_foreign_tokens_fail() {
        // Any change to payload or signature, or another secret, invalidates the token.
        let t = tokens();
        let (token, _) = t.issue(42).expect("sign");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let other = Tokens::new(
            b"another secret another secret !!",
            Duration::from_secs(600),
        );
        let (foreign, _) = other.issue(42).expect("sign");
        assert_eq!(t.verify(&foreign), Err(TokenError::Invalid));
        let (forged, _) = other.issue_as(1, Role::Admin).expect("sign");
        parts[1] = forged.split('.').nth(1).unwrap_or_default().to_owned();
        assert_eq!(t.verify(&parts.join(".")), Err(TokenError::Invalid));
        let mut sig: Vec<char> = token.chars().collect();
        let last = sig.len() - 2;
        sig[last] = if sig[last] == 'A' { 'B' } else { 'A' };
        assert_eq!(
            t.verify(&sig.into_iter().collect::<String>()),
            Err(TokenError::Invalid)
        );
        assert_eq!(t.verify("not.a.jwt"), Err(TokenError::Invalid));
    }

    #[test]
    fn expired_tokens_fail_as_expired() {
        // A token past exp (beyond the leeway) is refused as expired, not as invalid.
        let t = tokens();
        let long_ago = jsonwebtoken::get_current_timestamp() - 3600;
        let (token, _) = t.issue_at(7, Role::User, long_ago).expect("sign");
        assert_eq!(t.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn unsigned_tokens_fail() {
        // alg=none tokens are never accepted.
        let header = r#"{"alg":"none","typ":"JWT"}"#;
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let payload = format!(r#"{{"sub":"1","iss":"{ISSUER}","iat":0,"exp":{exp}}}"#);
        let token = format!(
            "{}.{}.",
            base64url(header.as_bytes()),
            base64url(payload.as_bytes())
        );
        assert_eq!(tokens().verify(&token), Err(TokenError::Invalid));
    }

    fn base64url(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
}
