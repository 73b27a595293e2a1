//! Configuration of the users binary: flags, each also read from its environment variable
//! (clap `env`), so `users --help` documents every variable.

use std::collections::BTreeSet;

use flotilla_kit::config::{check_secret, default_listen_addr, non_blank, MIN_TOKEN_LEN};
use flotilla_kit::jwt::{self, Verifier, AUDIENCE_USERS, DEV_PUBLIC_KEY};
use flotilla_kit::{ConfigError, ServiceArgs, ServiceConfig};

use crate::access::{Access, DEV_SERVICE_TOKEN};

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
    /// Concurrent Argon2 credential checks (19 MiB each); further checks answer 503.
    #[arg(long, env = "HASH_CONCURRENCY", default_value_t = crate::password::DEFAULT_CONCURRENCY)]
    pub hash_concurrency: usize,
    /// Concurrent Argon2 hashes of new passwords (sign-up, password change), apart from the
    /// credential checks' slots so sign-ups cannot starve logins; further ones answer 503.
    #[arg(long, env = "SIGNUP_HASH_CONCURRENCY", default_value_t = crate::password::DEFAULT_CHANGE_CONCURRENCY)]
    pub signup_hash_concurrency: usize,
    /// Sign-ups (POST /users) a minute per client address, in bursts of as many; over it
    /// sign-up answers 429 with Retry-After. 0 disables.
    #[arg(long, env = "SIGNUP_LIMIT_PER_ADDRESS", default_value_t = crate::signup::DEFAULT_PER_ADDRESS)]
    pub signup_limit_per_address: u32,
    /// Sign-ups a minute for the whole pod, whoever asks. 0 disables.
    #[arg(long, env = "SIGNUP_LIMIT_GLOBAL", default_value_t = crate::signup::DEFAULT_GLOBAL)]
    pub signup_limit_global: u32,
    /// Credential checks (POST /users/verify) a minute per account, in bursts of as many;
    /// over it the check answers 429 with Retry-After. 0 disables.
    #[arg(long, env = "VERIFY_LIMIT_PER_ACCOUNT", default_value_t = crate::DEFAULT_LIMIT_PER_ACCOUNT)]
    pub verify_limit_per_account: u32,
    /// Credential checks a minute per client address (normally an auth pod). 0 disables.
    #[arg(long, env = "VERIFY_LIMIT_PER_ADDRESS", default_value_t = crate::DEFAULT_LIMIT_PER_ADDRESS)]
    pub verify_limit_per_address: u32,
    /// auth's public keys, to check its tokens: PEM (PUBLIC KEY or CERTIFICATE blocks) or a
    /// JWKS document. Every route but sign-up and the credential check needs such a token.
    /// With neither this nor AUTH_JWKS_URL those routes answer 401.
    #[arg(long, env = "JWT_PUBLIC_KEYS", allow_hyphen_values = true)]
    pub public_keys: Option<String>,
    /// auth's JWKS (http://auth:8080/.well-known/jwks.json), fetched at start and every minute
    /// so rotated keys arrive without a restart; added to JWT_PUBLIC_KEYS, which stay the
    /// fallback while auth cannot be reached.
    #[arg(long, env = "AUTH_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// No longer read: refused with an error naming what replaced it.
    #[arg(long, env = "JWT_SECRET", hide = true, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Credential auth presents on POST /users/verify (the same USERS_SERVICE_TOKEN as
    /// auth's). Unset: every credential check answers 401.
    #[arg(long, env = "USERS_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
    /// Comma-separated addresses whose accounts get the admin role (every account, the
    /// listing). Creating an account with one of them needs the ADMIN_TOKEN bearer.
    #[arg(long, env = "ADMIN_EMAILS", value_delimiter = ',')]
    pub admin_emails: Vec<String>,
    /// Developer mode: the public development key and service credential when
    /// JWT_PUBLIC_KEYS (and AUTH_JWKS_URL) or USERS_SERVICE_TOKEN are unset (matching `auth --dev`).
    #[arg(long, env = "USERS_DEV")]
    pub dev: bool,
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
    /// `SIGNUP_HASH_CONCURRENCY` (at least 1).
    pub signup_hash_concurrency: usize,
    /// `VERIFY_LIMIT_PER_ACCOUNT` and `VERIFY_LIMIT_PER_ADDRESS`, checks a minute.
    pub verify_limits: (u32, u32),
    /// `SIGNUP_LIMIT_PER_ADDRESS` and `SIGNUP_LIMIT_GLOBAL`, sign-ups a minute.
    pub signup_limits: (u32, u32),
    /// `AUTH_JWKS_URL`: where to fetch auth's current keys into `access.tokens`.
    pub jwks_url: Option<flotilla_kit::jwks::Url>,
    /// `JWT_PUBLIC_KEYS`, `USERS_SERVICE_TOKEN`, `ADMIN_EMAILS` and `ADMIN_TOKEN`.
    pub access: Access,
    /// Whether developer mode supplied a public credential.
    pub dev: bool,
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
        let service = self.service.resolve(default_listen_addr())?;
        jwt::refuse_shared_secret(self.jwt_secret.as_deref())?;
        let jwks_url = non_blank(self.jwks_url.as_deref())
            .map(|u| jwt::jwks_url_from(&u))
            .transpose()?;
        let access = self.access(&service, jwks_url.is_some())?;
        Ok(Config {
            service,
            database_url,
            hash_concurrency: self.hash_concurrency.max(1),
            signup_hash_concurrency: self.signup_hash_concurrency.max(1),
            verify_limits: (self.verify_limit_per_account, self.verify_limit_per_address),
            signup_limits: (self.signup_limit_per_address, self.signup_limit_global),
            jwks_url,
            access,
            dev: self.dev,
        })
    }

    fn access(&self, service: &ServiceConfig, fetching: bool) -> Result<Access, ConfigError> {
        let public_keys = match non_blank(self.public_keys.as_deref()) {
            Some(text) => Some(jwt::public_keys_from("JWT_PUBLIC_KEYS", &text)?),
            None if self.dev && !fetching => {
                Some(jwt::public_keys_from("JWT_PUBLIC_KEYS", DEV_PUBLIC_KEY)?)
            }
            None if fetching => Some(Vec::new()),
            None => None,
        };
        let service_token = match non_blank(self.service_token.as_deref()) {
            Some(t) => {
                check_secret("USERS_SERVICE_TOKEN", &t, MIN_TOKEN_LEN)?;
                Some(t)
            }
            None => self.dev.then(|| DEV_SERVICE_TOKEN.to_owned()),
        };
        let mut admin_emails = BTreeSet::new();
        for raw in self.admin_emails.iter().filter(|e| !e.trim().is_empty()) {
            let email =
                crate::model::validate_email(raw).map_err(|reason| ConfigError::Invalid {
                    var: "ADMIN_EMAILS",
                    value: raw.clone(),
                    reason,
                })?;
            admin_emails.insert(email);
        }
        Ok(Access {
            // Public keys only: users cannot mint tokens.
            tokens: public_keys.map(|keys| Verifier::for_audience(AUDIENCE_USERS, keys)),
            service_token,
            admin_emails,
            admin_token: service.admin_token.clone(),
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
    fn credentials_are_checked_and_dev_mode_fills_them() {
        // Without credentials the service is closed; guessable ones are refused by name;
        // --dev supplies the public development pair; admin addresses are normalised.
        let cfg = parse(&[]).expect("defaults");
        assert!(cfg.access.tokens.is_none() && cfg.access.service_token.is_none());
        let err = parse(&["--jwt-secret", "Kf8d2LqW9zX4vB7nM1pR6tY3hJ5gC0sA"]).expect_err("old");
        assert!(
            err.contains("JWT_SECRET") && err.contains("JWT_PUBLIC_KEYS"),
            "{err}"
        );
        let err =
            parse(&["--public-keys", "0123456789abcdef0123456789abcdef"]).expect_err("not a key");
        assert!(err.contains("JWT_PUBLIC_KEYS"), "{err}");
        let cfg = parse(&["--public-keys", DEV_PUBLIC_KEY]).expect("a public key");
        assert!(cfg.access.tokens.is_some());
        let err = parse(&["--jwks-url", "https://auth/.well-known/jwks.json"]).expect_err("tls");
        assert!(err.contains("AUTH_JWKS_URL"), "{err}");
        let cfg = parse(&["--jwks-url", "http://auth:8080/.well-known/jwks.json"]).expect("url");
        assert!(cfg.access.tokens.is_some() && cfg.jwks_url.is_some());
        let err = parse(&["--service-token", "short"]).expect_err("weak");
        assert!(err.contains("USERS_SERVICE_TOKEN"), "{err}");
        let cfg = parse(&[
            "--dev",
            "--admin-emails",
            "Root@Example.com, ops@example.com",
        ])
        .expect("dev");
        assert!(cfg.access.tokens.is_some());
        assert_eq!(cfg.access.service_token.as_deref(), Some(DEV_SERVICE_TOKEN));
        assert!(cfg.access.admin_emails.contains("root@example.com"));
        assert!(cfg.access.admin_emails.contains("ops@example.com"));
        let err = parse(&["--admin-emails", "not-an-address"]).expect_err("invalid");
        assert!(err.contains("ADMIN_EMAILS"), "{err}");
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
            "SIGNUP_HASH_CONCURRENCY",
            "SIGNUP_LIMIT_PER_ADDRESS",
            "SIGNUP_LIMIT_GLOBAL",
            "JWT_PUBLIC_KEYS",
            "AUTH_JWKS_URL",
            "USERS_SERVICE_TOKEN",
            "ADMIN_EMAILS",
            "USERS_DEV",
        ] {
            assert!(
                help.contains(&format!("env: {var}")),
                "{var} missing:\n{help}"
            );
        }
    }
}
