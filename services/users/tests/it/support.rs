//! What the users tests share: the credential auth presents to users.

/// The credential auth presents on users' credential check (`SERVICE_TOKEN`).
pub const SERVICE: &str = "svc-Vq7m2Xk9Lp4Wz8Rt";
