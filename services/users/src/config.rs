//! Configuration of the users binary: flags, each also read from its environment variable
//! (clap `env`), so `users --help` documents every variable.

use flotilla_kit::config::{default_listen_addr, non_blank};
use flotilla_kit::{ConfigError, ServiceArgs, ServiceConfig};

/// Default database: a SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://users.db";

/// User accounts over REST for Flotilla's sample services.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "users", version)]
pub struct Args {
    /// Shared service settings.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Database: `sqlite://<file>`, `sqlite::memory:` or `postgres://user:pass@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Concurrent Argon2 hashes (19 MiB each); further password requests answer 503.
    #[arg(long, env = "HASH_CONCURRENCY", default_value_t = 2)]
    pub hash_concurrency: usize,
    /// Credential checks (POST /users/verify) a minute per account, in bursts of as many;
    /// over it the check answers 429 with Retry-After. 0 disables.
    #[arg(long, env = "VERIFY_LIMIT_PER_ACCOUNT", default_value_t = crate::DEFAULT_LIMIT_PER_ACCOUNT)]
    pub verify_limit_per_account: u32,
    /// Credential checks a minute per client address (normally an auth pod). 0 disables.
    #[arg(long, env = "VERIFY_LIMIT_PER_ADDRESS", default_value_t = crate::DEFAULT_LIMIT_PER_ADDRESS)]
    pub verify_limit_per_address: u32,
}

/// Everything the users service reads at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared service settings (`LISTEN_ADDR`, `LOG_FORMAT`, `ADMIN_TOKEN`, ...).
    pub service: ServiceConfig,
    /// `DATABASE_URL`: `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// `HASH_CONCURRENCY` (at least 1).
    pub hash_concurrency: usize,
    /// `VERIFY_LIMIT_PER_ACCOUNT` and `VERIFY_LIMIT_PER_ADDRESS`, checks a minute.
    pub verify_limits: (u32, u32),
}

impl Args {
    /// Checks what clap cannot and resolves defaults.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let database_url =
            non_blank(Some(&self.database_url)).unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        if crate::db::Backend::from_url(&database_url).is_err() {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                value: crate::db::redact(&database_url),
                reason: "expected a sqlite:// or postgres:// URL".into(),
            });
        }
        Ok(Config {
            service: self.service.resolve(default_listen_addr())?,
            database_url,
            hash_concurrency: self.hash_concurrency.max(1),
            verify_limits: (self.verify_limit_per_account, self.verify_limit_per_address),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let mut args = vec!["users"];
        args.extend_from_slice(extra);
        Args::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .resolve()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn database_url_defaults_and_validates() {
        // The default works in any working directory; a foreign scheme is refused by name.
        let cfg = parse(&[]).expect("defaults");
        assert_eq!(cfg.database_url, "sqlite://users.db");
        let err = parse(&["--database-url", "mysql://x/y"]).expect_err("unsupported");
        assert!(err.contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn help_documents_every_variable() {
        // `users --help` names the shared variables and the users-specific ones.
        let help = <Args as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for var in [
            "LISTEN_ADDR",
            "ADMIN_TOKEN",
            "DATABASE_URL",
            "HASH_CONCURRENCY",
        ] {
            assert!(
                help.contains(&format!("env: {var}")),
                "{var} missing:\n{help}"
            );
        }
    }
}
