//! Token issuing and checking: EdDSA (Ed25519) JWTs with subject, role, audience, issuer, issue
//! and expiry times, and a `kid` header naming the key that signed them.
//!
//! auth holds the private key and signs ([`Signer`]); users and orders hold public keys only
//! ([`Verifier`]), so a compromised verifier cannot mint tokens. Keys are named by their RFC 7638
//! thumbprint, published as a JWKS ([`Jwks`]), and a verifier accepts exactly the keys it was
//! given or fetched (see [`crate::jwks`]): an unknown `kid`, another algorithm (HS256 above all)
//! or a token for another audience is refused. Pure apart from reading the clock.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::ConfigError;

mod keys;

pub use keys::{
    parse_public_keys, JwkEntry, Jwks, KeyError, PublicKey, SigningKey, DEV_PUBLIC_KEY,
    DEV_SIGNING_KEY,
};

/// The `iss` claim of every token.
pub const ISSUER: &str = "flotilla-auth";

/// The only signature algorithm issued and accepted.
pub const ALGORITHM: Algorithm = Algorithm::EdDSA;

/// Audience of the users service (`aud` claim).
pub const AUDIENCE_USERS: &str = "users";

/// Audience of the orders service.
pub const AUDIENCE_ORDERS: &str = "orders";

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
    /// The user's stable id (a UUID), as a string.
    pub sub: String,
    /// The holder's role; tokens without one are plain users.
    #[serde(default)]
    pub role: Role,
    /// Issuer, always [`ISSUER`].
    pub iss: String,
    /// The services the token is meant for; each refuses a token not naming it.
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

/// `aud` may be one string or a list (RFC 7519 §4.1.3).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(a) => vec![a],
        Aud::Many(a) => a,
    })
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is past its `exp`.
    #[error("token expired")]
    Expired,
    /// The token names no key, or one this service does not know.
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// The token is not meant for this service.
    #[error("token not meant for this service")]
    WrongAudience,
    /// Bad signature, wrong algorithm or issuer, or not a JWT at all.
    #[error("invalid token")]
    Invalid,
    /// Signing failed.
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// The hint every service gives for a leftover `JWT_SECRET`.
pub const SHARED_SECRET_REPLACED: &str = "JWT_SECRET is no longer read: auth signs tokens with an \
     Ed25519 key (JWT_SIGNING_KEY, PKCS#8 PEM: openssl genpkey -algorithm ed25519) and publishes \
     its public keys at /.well-known/jwks.json; users and orders verify with JWT_PUBLIC_KEYS \
     and/or AUTH_JWKS_URL. Remove JWT_SECRET";

/// Refuses a configured `JWT_SECRET` (the HS256 secret of earlier releases) with an error
/// naming what replaced it, so an old manifest fails loudly instead of being half-applied.
pub fn refuse_shared_secret(value: Option<&str>) -> Result<(), ConfigError> {
    match value.filter(|v| !v.trim().is_empty()) {
        Some(_) => Err(ConfigError::Invalid {
            var: "JWT_SECRET",
            value: "<redacted>".into(),
            reason: SHARED_SECRET_REPLACED.into(),
        }),
        None => Ok(()),
    }
}

/// Reads the public keys in the variable `var` (PEM blocks or a JWKS document).
pub fn public_keys_from(var: &'static str, text: &str) -> Result<Vec<PublicKey>, ConfigError> {
    parse_public_keys(text).map_err(|e| ConfigError::Invalid {
        var,
        value: "<keys>".into(),
        reason: e.to_string(),
    })
}

/// Reads `AUTH_JWKS_URL`: plain `http://` (the build has no TLS), with a host.
pub fn jwks_url_from(raw: &str) -> Result<reqwest::Url, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        var: "AUTH_JWKS_URL",
        value: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "http" {
        return Err(invalid("only http:// is supported (this build has no TLS)"));
    }
    if url.host_str().is_none() {
        return Err(invalid("missing host"));
    }
    Ok(url)
}

/// Issues tokens with the current key; publishes it and the previous ones (whose tokens stay
/// valid until they expire); verifies its own tokens for `/verify`.
#[derive(Debug, Clone)]
pub struct Signer {
    current: SigningKey,
    audiences: Vec<String>,
    ttl: Duration,
    verifier: Verifier,
}

impl Signer {
    /// Signs with `current`, valid for `ttl`, for `audiences`; `previous` keys are published
    /// and accepted, never used to sign.
    pub fn new(
        current: SigningKey,
        previous: Vec<PublicKey>,
        audiences: Vec<String>,
        ttl: Duration,
    ) -> Self {
        let mut keys = vec![current.public.clone()];
        keys.extend(previous.into_iter().filter(|k| *k != current.public));
        let verifier = Verifier::new(audiences.clone(), keys);
        Self {
            current,
            audiences,
            ttl,
            verifier,
        }
    }

    /// Lifetime of issued tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The audiences every token names.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The key id of the signing key.
    pub fn kid(&self) -> &str {
        self.current.public.kid()
    }

    /// The published keys, signing key first.
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self.verifier.keys().iter().map(PublicKey::jwk).collect(),
        }
    }

    /// Issues a plain user's token for `user_id` now.
    pub fn issue(&self, user_id: &str) -> Result<(String, Claims), TokenError> {
        self.issue_as(user_id, Role::User)
    }

    /// Issues a token for `user_id` with `role` now.
    pub fn issue_as(&self, user_id: &str, role: Role) -> Result<(String, Claims), TokenError> {
        self.issue_at(user_id, role, jsonwebtoken::get_current_timestamp())
    }

    /// Issues a token as if the time were `now` (Unix seconds).
    pub fn issue_at(
        &self,
        user_id: &str,
        role: Role,
        now: u64,
    ) -> Result<(String, Claims), TokenError> {
        let claims = Claims {
            sub: user_id.to_owned(),
            role,
            iss: ISSUER.to_owned(),
            aud: self.audiences.clone(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(self.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &self.current.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        Ok((token, claims))
    }

    /// Checks a token as any of the audiences would (auth's `/verify`).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verifier.verify(token)
    }
}

/// Checks tokens with public keys only: the configured ones plus those last fetched from
/// auth's JWKS. Cheap to clone; clones share the fetched keys.
#[derive(Clone)]
pub struct Verifier {
    validation: Validation,
    configured: Arc<Vec<PublicKey>>,
    fetched: Arc<RwLock<Vec<PublicKey>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "kids",
                &self
                    .keys()
                    .iter()
                    .map(|k| k.kid.clone())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Accepts tokens naming any of `audiences`, signed by one of `keys`.
    pub fn new(audiences: Vec<String>, keys: Vec<PublicKey>) -> Self {
        let mut validation = Validation::new(ALGORITHM);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            validation,
            configured: Arc::new(keys),
            fetched: Arc::default(),
        }
    }

    /// A verifier for one service's audience.
    pub fn for_audience(audience: &str, keys: Vec<PublicKey>) -> Self {
        Self::new(vec![audience.to_owned()], keys)
    }

    /// Replaces the fetched keys (the configured ones stay).
    pub fn set_fetched(&self, keys: Vec<PublicKey>) {
        match self.fetched.write() {
            Ok(mut g) => *g = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }

    /// Every key accepted now: configured first, then fetched.
    pub fn keys(&self) -> Vec<PublicKey> {
        let fetched = match self.fetched.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut keys = self.configured.as_ref().clone();
        keys.extend(fetched.into_iter().filter(|k| !self.configured.contains(k)));
        keys
    }

    fn find(&self, kid: &str) -> Option<PublicKey> {
        self.keys().into_iter().find(|k| k.kid == kid)
    }

    /// Checks algorithm, key, signature, issuer, audience and expiry; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != ALGORITHM {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.find(&kid).ok_or(TokenError::UnknownKey)?;
        jsonwebtoken::decode::<Claims>(token, &key.decoding_key(), &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                _ => TokenError::Invalid,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::EncodingKey;

    fn aud(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn signer(key: &SigningKey) -> Signer {
        Signer::new(
            key.clone(),
            Vec::new(),
            aud(&[AUDIENCE_USERS, AUDIENCE_ORDERS]),
            Duration::from_secs(600),
        )
    }

    const UID: &str = "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c";

    #[test]
    fn issued_tokens_verify_with_the_public_key_only() {
        // A fresh token round-trips to the same claims through a verifier holding only the
        // public key, for each audience it names.
        let key = SigningKey::generate().expect("key");
        let s = signer(&key);
        let (token, claims) = s.issue(UID).expect("sign");
        let users = Verifier::for_audience(AUDIENCE_USERS, vec![key.public_key().clone()]);
        assert_eq!(users.verify(&token), Ok(claims.clone()));
        assert_eq!(claims.sub, UID);
        assert_eq!(claims.aud, aud(&["users", "orders"]));
        assert_eq!(claims.exp - claims.iat, 600);
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(key.public_key().kid()));
        let (admin, _) = s.issue_as(UID, Role::Admin).expect("sign");
        assert_eq!(users.verify(&admin).map(|c| c.role), Ok(Role::Admin));
        assert_eq!(s.verify(&admin).map(|c| c.role), Ok(Role::Admin));
    }

    #[test]
    fn tokens_for_another_audience_fail() {
        // A token auth issued for orders only does not open users.
        let key = SigningKey::generate().expect("key");
        let s = Signer::new(
            key.clone(),
            Vec::new(),
            aud(&[AUDIENCE_ORDERS]),
            Duration::from_secs(600),
        );
        let (token, _) = s.issue(UID).expect("sign");
        let users = Verifier::for_audience(AUDIENCE_USERS, vec![key.public_key().clone()]);
        let orders = Verifier::for_audience(AUDIENCE_ORDERS, vec![key.public_key().clone()]);
        assert_eq!(users.verify(&token), Err(TokenError::WrongAudience));
        assert!(orders.verify(&token).is_ok());
    }

    #[test]
    fn unknown_keys_and_hs256_tokens_fail() {
        // A token from a key the verifier does not hold, one whose kid names a trusted key but
        // is signed by another, and an HS256 token (even one "signed" with the public key's
        // bytes) are all refused.
        let trusted = SigningKey::generate().expect("key");
        let rogue = SigningKey::generate().expect("key");
        let v = Verifier::for_audience(AUDIENCE_USERS, vec![trusted.public_key().clone()]);
        let (foreign, _) = signer(&rogue).issue_as(UID, Role::Admin).expect("sign");
        assert_eq!(v.verify(&foreign), Err(TokenError::UnknownKey));

        let claims = signer(&trusted).issue(UID).expect("sign").1;
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(trusted.public_key().kid().to_owned());
        let forged = jsonwebtoken::encode(&header, &claims, &rogue.encoding).expect("sign");
        assert_eq!(v.verify(&forged), Err(TokenError::Invalid));

        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some(trusted.public_key().kid().to_owned());
        for secret in [
            &trusted.public_key().x[..],
            b"0123456789abcdef0123456789abcdef",
        ] {
            let token =
                jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(secret)).expect("hs");
            assert_eq!(v.verify(&token), Err(TokenError::Invalid));
        }
        assert_eq!(v.verify("not.a.jwt"), Err(TokenError::Invalid));
    }

    #[test]
    fn previous_keys_are_published_and_accepted_but_never_sign() {
        // After a rotation the old key's tokens still verify until they expire; new tokens
        // carry the new kid; the JWKS lists both, the signing key first.
        let old = SigningKey::generate().expect("key");
        let new = SigningKey::generate().expect("key");
        let (old_token, _) = signer(&old).issue(UID).expect("sign");
        let rotated = Signer::new(
            new.clone(),
            vec![old.public_key().clone()],
            aud(&[AUDIENCE_USERS]),
            Duration::from_secs(600),
        );
        let jwks = rotated.jwks();
        let kids: Vec<_> = jwks.keys.iter().filter_map(|k| k.kid.clone()).collect();
        assert_eq!(kids, [new.public_key().kid(), old.public_key().kid()]);
        let v = Verifier::for_audience(AUDIENCE_USERS, jwks.public_keys().expect("keys"));
        assert!(v.verify(&old_token).is_ok());
        let (token, _) = rotated.issue(UID).expect("sign");
        assert_eq!(
            jsonwebtoken::decode_header(&token)
                .expect("header")
                .kid
                .as_deref(),
            Some(new.public_key().kid())
        );
        assert!(v.verify(&token).is_ok());
    }

    #[test]
    fn fetched_keys_join_the_configured_ones() {
        // A verifier learns a key from a fetch and forgets it at the next fetch without it.
        let key = SigningKey::generate().expect("key");
        let v = Verifier::for_audience(AUDIENCE_USERS, Vec::new());
        let (token, _) = signer(&key).issue(UID).expect("sign");
        assert_eq!(v.verify(&token), Err(TokenError::UnknownKey));
        v.clone().set_fetched(vec![key.public_key().clone()]);
        assert!(v.verify(&token).is_ok());
        v.set_fetched(Vec::new());
        assert_eq!(v.verify(&token), Err(TokenError::UnknownKey));
    }

    #[test]
    fn expired_tokens_fail_as_expired() {
        // A token past exp (beyond the leeway) is refused as expired, not as invalid.
        let key = SigningKey::generate().expect("key");
        let s = signer(&key);
        let long_ago = jsonwebtoken::get_current_timestamp() - 3600;
        let (token, _) = s.issue_at(UID, Role::User, long_ago).expect("sign");
        assert_eq!(s.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn unsigned_tokens_fail() {
        // alg=none tokens are never accepted.
        let key = SigningKey::generate().expect("key");
        let header = format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            key.public_key().kid()
        );
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let payload =
            format!(r#"{{"sub":"{UID}","iss":"{ISSUER}","aud":"users","iat":0,"exp":{exp}}}"#);
        let token = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        assert_eq!(signer(&key).verify(&token), Err(TokenError::Invalid));
    }
}
