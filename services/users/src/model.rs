//! Wire types of the users API and their validation. Pure: no database, no HTTP.
//!
//! Request bodies reject unknown fields so a misspelt field is a 400, not silently ignored.
//! The password hash never appears in any response type.

use serde::{Deserialize, Serialize};

/// Longest accepted name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in characters (bounds hashing cost per request).
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Longest accepted email, in bytes (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size.
pub const MAX_LIMIT: i64 = 500;

/// A user as returned by the API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Stable id, a UUID: never reused, even when the database is recreated.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Lower-cased email, unique.
    pub email: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
}

/// `POST /users` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Plain-text password; hashed before storage, never stored or logged.
    pub password: String,
}

/// `PUT /users/{id}` body: every field optional, at least one required.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New display name.
    pub name: Option<String>,
    /// New email address.
    pub email: Option<String>,
    /// New password.
    pub password: Option<String>,
}

/// `POST /users/verify` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Email address.
    pub email: String,
    /// Plain-text password.
    pub password: String,
}

/// `POST /users/verify` success body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verified {
    /// Id (UUID) of the user the credentials belong to.
    pub id: String,
    /// The account's role, for auth to put in the token it issues.
    #[serde(default)]
    pub role: flotilla_kit::jwt::Role,
}

/// `GET /users` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Page {
    /// Users, oldest first.
    pub items: Vec<User>,
    /// Page size used.
    pub limit: i64,
    /// Offset used.
    pub offset: i64,
}

/// Validates and normalises a display name (trimmed).
pub fn validate_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("name must be at most {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    Ok(name.to_owned())
}

/// Validates the shape of an email and lower-cases it. Shape only: deliverability is not
/// checked.
pub fn validate_email(email: &str) -> Result<String, String> {
    let email = email.trim().to_lowercase();
    let bad = || Err(format!("{email:?} is not an email address"));
    if email.len() > MAX_EMAIL_LEN {
        return Err(format!("email must be at most {MAX_EMAIL_LEN} bytes"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return bad();
    };
    let allowed_local = |c: char| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    let allowed_domain = |c: char| c.is_alphanumeric() || c == '-' || c == '.';
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.chars().all(allowed_local)
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let domain_ok = domain.contains('.')
        && domain.chars().all(allowed_domain)
        && domain
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if local_ok && domain_ok {
        Ok(email)
    } else {
        bad()
    }
}

/// Checks password length; the content is never echoed back.
pub fn validate_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(format!(
            "password must be at most {MAX_PASSWORD_CHARS} characters"
        ));
    }
    Ok(())
}

/// Parses `limit` and `offset` from query parameters; unknown parameters are refused.
pub fn parse_page(params: &[(String, String)]) -> Result<(i64, i64), String> {
    let (mut limit, mut offset) = (DEFAULT_LIMIT, 0);
    for (k, v) in params {
        let n: i64 = v
            .parse()
            .map_err(|_| format!("{k} must be a whole number, got {v:?}"))?;
        match k.as_str() {
            "limit" if (1..=MAX_LIMIT).contains(&n) => limit = n,
            "limit" => return Err(format!("limit must be between 1 and {MAX_LIMIT}")),
            "offset" if n >= 0 => offset = n,
            "offset" => return Err("offset must not be negative".into()),
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    Ok((limit, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        // Plausible addresses pass lower-cased; malformed ones are refused.
        assert_eq!(
            validate_email(" Ada@Example.ORG ").as_deref(),
            Ok("ada@example.org")
        );
        assert!(validate_email("a.b+tag@sub.example.com").is_ok());
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@-x.com",
            "a..b@c.com",
            "a@c..com",
            ".a@c.com",
        ] {
            assert!(validate_email(bad).is_err(), "{bad} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(validate_email(&long).is_err());
    }

    #[test]
    fn names_and_passwords() {
        // Names are trimmed and bounded; passwords are bounded in characters.
        assert_eq!(validate_name("  Ada ").as_deref(), Ok("Ada"));
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
        assert!(validate_name("a\u{0007}b").is_err());
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough").is_ok());
        assert!(validate_password(&"p".repeat(MAX_PASSWORD_CHARS + 1)).is_err());
    }

    #[test]
    fn pages() {
        // Defaults apply, bounds are enforced, unknown parameters are refused.
        let p = |pairs: &[(&str, &str)]| {
            let v: Vec<(String, String)> = pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect();
            parse_page(&v)
        };
        assert_eq!(p(&[]), Ok((DEFAULT_LIMIT, 0)));
        assert_eq!(p(&[("limit", "10"), ("offset", "20")]), Ok((10, 20)));
        assert!(p(&[("limit", "0")]).is_err());
        assert!(p(&[("limit", "ten")]).is_err());
        assert!(p(&[("offset", "-1")]).is_err());
        assert!(p(&[("page", "2")]).is_err());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        // A misspelt field fails parsing instead of being ignored.
        let err = serde_json::from_str::<NewUser>(
            r#"{"name":"a","email":"a@b.co","password":"12345678","admin":true}"#,
        );
        assert!(err.is_err());
        let ok = serde_json::from_str::<UpdateUser>(r#"{"name":"b"}"#).expect("parse");
        assert_eq!(ok.name.as_deref(), Some("b"));
    }
}
