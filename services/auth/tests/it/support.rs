//! What the auth tests share: auth's signing key and signer, and the credential auth presents
//! to users.

use std::time::Duration;

use auth::Signer;
use flotilla_kit::jwt::SigningKey;

/// The credential auth presents on users' credential check.
pub const SERVICE: &str = "svc-Vq7m2Xk9Lp4Wz8Rt";

/// auth's signing key in these tests; users under test holds its public half.
pub fn key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("key"))
}

/// auth's token signer: [`key`], for users and orders.
pub fn signer(ttl: Duration) -> Signer {
    let audiences = ["users", "orders"].map(str::to_owned).to_vec();
    Signer::new(key().clone(), Vec::new(), audiences, ttl)
}
