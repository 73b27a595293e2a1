//! Configuration of the users binary, from the environment.

use flotilla_kit::config::non_empty;
use flotilla_kit::{ConfigError, ServiceConfig};

/// Default database: a SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://users.db";

/// Everything the users service reads at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared service settings (`LISTEN_ADDR`, `LOG_FORMAT`, `ADMIN_TOKEN`, ...).
    pub service: ServiceConfig,
    /// `DATABASE_URL`: `sqlite://...` or `postgres://...`.
    pub database_url: String,
}

impl Config {
    /// Reads the configuration through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let database_url =
            non_empty(&lookup, "DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if crate::db::Backend::from_url(&database_url).is_err() {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                value: crate::db::redact(&database_url),
                reason: "expected a sqlite:// or postgres:// URL".into(),
            });
        }
        Ok(Self {
            service: ServiceConfig::from_lookup(lookup)?,
            database_url,
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
    fn database_url_defaults_and_validates() {
        // The default works in any working directory; a foreign scheme is refused by name.
        let cfg = Config::from_lookup(|_| None).expect("defaults");
        assert_eq!(cfg.database_url, "sqlite://users.db");
        let err = Config::from_lookup(|k| (k == "DATABASE_URL").then(|| "mysql://x/y".into()))
            .expect_err("unsupported");
        assert!(err.to_string().contains("DATABASE_URL"));
    }
}
