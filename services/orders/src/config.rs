//! Configuration of the orders binary, from the environment.

use flotilla_kit::config::non_empty;
use flotilla_kit::{ConfigError, ServiceConfig};

/// Default database: a SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://orders.db";

/// Shortest accepted `JWT_SECRET`, in bytes (the auth service's own limit).
pub const MIN_SECRET_LEN: usize = auth::config::MIN_SECRET_LEN;

/// Everything the orders service reads at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared service settings (`LISTEN_ADDR`, `LOG_FORMAT`, `ADMIN_TOKEN`, ...).
    pub service: ServiceConfig,
    /// `DATABASE_URL`: `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// `JWT_SECRET`: the secret the auth service signs tokens with (required).
    pub jwt_secret: Vec<u8>,
    /// `TRAFFIC_VERDICT`: `honour` (default) closes persistent connections while Flotilla says
    /// the pod is ejected (or it is not ready); `ignore` keeps them, as a server that knows
    /// nothing of the verdict would (to see sticky-connection detection at work).
    pub honour_traffic_verdict: bool,
}

impl Config {
    /// Reads the configuration through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let database_url =
            non_empty(&lookup, "DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if crate::db::is_postgres(&database_url).is_err() {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                value: crate::db::redact(&database_url),
                reason: "expected a sqlite:// or postgres:// URL".into(),
            });
        }
        let jwt_secret = match non_empty(&lookup, "JWT_SECRET") {
            Some(s) if s.len() < MIN_SECRET_LEN => {
                return Err(ConfigError::Invalid {
                    var: "JWT_SECRET",
                    value: "<hidden>".into(),
                    reason: format!("must be at least {MIN_SECRET_LEN} bytes"),
                })
            }
            Some(s) => s.into_bytes(),
            None => {
                return Err(ConfigError::Missing {
                    var: "JWT_SECRET",
                    hint: "set it to the auth service's JWT_SECRET",
                })
            }
        };
        let honour_traffic_verdict = match non_empty(&lookup, "TRAFFIC_VERDICT").as_deref() {
            None | Some("honour") => true,
            Some("ignore") => false,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "TRAFFIC_VERDICT",
                    value: other.to_owned(),
                    reason: "expected honour or ignore".into(),
                })
            }
        };
        Ok(Self {
            honour_traffic_verdict,
            service: ServiceConfig::from_lookup(lookup)?,
            database_url,
            jwt_secret,
        })
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_required_and_checked() {
        // Without the auth secret no token could be checked, so start-up refuses, naming it.
        let err = Config::from_lookup(|_| None).expect_err("missing");
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: "JWT_SECRET",
                ..
            }
        ));
        let err = Config::from_lookup(|k| (k == "JWT_SECRET").then(|| "short".into()))
            .expect_err("short");
        assert!(!err.to_string().contains("short\""));
        let cfg =
            Config::from_lookup(|k| (k == "JWT_SECRET").then(|| "x".repeat(32))).expect("valid");
        assert_eq!(cfg.database_url, DEFAULT_DATABASE_URL);
        assert!(cfg.honour_traffic_verdict);
    }

    #[test]
    fn traffic_verdict_is_honour_or_ignore() {
        // Anything else is refused, naming the variable.
        let with = |v: &'static str| {
            Config::from_lookup(move |k| match k {
                "JWT_SECRET" => Some("x".repeat(32)),
                "TRAFFIC_VERDICT" => Some(v.to_owned()),
                _ => None,
            })
        };
        assert!(!with("ignore").expect("valid").honour_traffic_verdict);
        assert!(with("honour").expect("valid").honour_traffic_verdict);
        let err = with("sometimes").expect_err("invalid");
        assert!(err.to_string().contains("TRAFFIC_VERDICT"), "{err}");
    }
}
