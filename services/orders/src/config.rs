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
        Ok(Self {
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
    }
}
