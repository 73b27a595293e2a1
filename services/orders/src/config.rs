//! Configuration of the orders binary, from the environment.

use flotilla_kit::config::non_empty;
use flotilla_kit::jwks::Url;
use flotilla_kit::jwt::{self, PublicKey};
use flotilla_kit::{ConfigError, ServiceConfig};

/// Default database: a SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://orders.db";

/// Everything the orders service reads at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared service settings (`LISTEN_ADDR`, `LOG_FORMAT`, `ADMIN_TOKEN`, ...).
    pub service: ServiceConfig,
    /// `DATABASE_URL`: `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// `JWT_PUBLIC_KEYS`: auth's public keys (PEM or JWKS); orders cannot mint tokens.
    pub public_keys: Vec<PublicKey>,
    /// `AUTH_JWKS_URL`: auth's JWKS, fetched and refreshed; one of the two is required.
    pub jwks_url: Option<Url>,
    /// `TRAFFIC_VERDICT`: `honour` (default) closes persistent connections while Flotilla says
    /// the pod is ejected (or it is not ready); `ignore` keeps them, as a server that knows
    /// nothing of the verdict would (to see sticky-connection detection at work).
    pub honour_traffic_verdict: bool,
    /// `AMQP_URL`: the RabbitMQ broker `OrderPlaced` events are published to
    /// (`amqp://user:password@host:5672/%2f`). Unset, events are off: no outbox rows are
    /// written and nothing is published.
    pub amqp_url: Option<String>,
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
        jwt::refuse_shared_secret(lookup("JWT_SECRET").as_deref())?;
        let public_keys = non_empty(&lookup, "JWT_PUBLIC_KEYS")
            .map(|text| jwt::public_keys_from("JWT_PUBLIC_KEYS", &text))
            .transpose()?
            .unwrap_or_default();
        let jwks_url = non_empty(&lookup, "AUTH_JWKS_URL")
            .map(|u| jwt::jwks_url_from(&u))
            .transpose()?;
        if public_keys.is_empty() && jwks_url.is_none() {
            return Err(ConfigError::Missing {
                var: "JWT_PUBLIC_KEYS",
                hint: "set it to auth's public key(s) (PEM or JWKS), or set AUTH_JWKS_URL to \
                       auth's /.well-known/jwks.json",
            });
        }
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
        let amqp_url = non_empty(&lookup, "AMQP_URL")
            .map(|url| amqp_url(&url))
            .transpose()?;
        Ok(Self {
            honour_traffic_verdict,
            amqp_url,
            service: ServiceConfig::from_lookup(lookup)?,
            database_url,
            public_keys,
            jwks_url,
        })
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
}

/// Checks an `AMQP_URL`: plain `amqp://` (services speak no TLS) that the client can parse.
/// Errors show the URL with its password hidden.
fn amqp_url(url: &str) -> Result<String, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        var: "AMQP_URL",
        value: crate::db::redact(url),
        reason,
    };
    if !url.starts_with("amqp://") {
        return Err(invalid("expected an amqp:// URL".into()));
    }
    url.parse::<lapin::uri::AMQPUri>().map_err(invalid)?;
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_keys_are_required_and_the_old_secret_refused() {
        // Without auth's public keys no token could be checked, so start-up refuses, naming
        // the variable; a leftover JWT_SECRET is refused naming its replacement, unechoed.
        let err = Config::from_lookup(|_| None).expect_err("missing");
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: "JWT_PUBLIC_KEYS",
                ..
            }
        ));
        let secret = "Kf8d2LqW9zX4vB7nM1pR6tY3hJ5gC0sA";
        let err = Config::from_lookup(|k| match k {
            "JWT_SECRET" => Some(secret.into()),
            "JWT_PUBLIC_KEYS" => Some(jwt::DEV_PUBLIC_KEY.into()),
            _ => None,
        })
        .expect_err("old secret");
        assert!(err.to_string().contains("JWT_PUBLIC_KEYS"), "{err}");
        assert!(!err.to_string().contains(secret), "{err}");
        let err = Config::from_lookup(|k| (k == "JWT_PUBLIC_KEYS").then(|| "x".repeat(32)))
            .expect_err("not a key");
        assert!(err.to_string().contains("JWT_PUBLIC_KEYS"), "{err}");
        let cfg =
            Config::from_lookup(|k| (k == "JWT_PUBLIC_KEYS").then(|| jwt::DEV_PUBLIC_KEY.into()))
                .expect("valid");
        assert_eq!(cfg.public_keys.len(), 1);
        assert_eq!(cfg.database_url, DEFAULT_DATABASE_URL);
        assert!(cfg.honour_traffic_verdict);
        assert_eq!(cfg.amqp_url, None);
        let cfg = Config::from_lookup(|k| {
            (k == "AUTH_JWKS_URL").then(|| "http://auth:8080/.well-known/jwks.json".into())
        })
        .expect("valid");
        assert!(cfg.public_keys.is_empty() && cfg.jwks_url.is_some());
    }

    #[test]
    fn traffic_verdict_is_honour_or_ignore() {
        // Anything else is refused, naming the variable.
        let with = |v: &'static str| {
            Config::from_lookup(move |k| match k {
                "JWT_PUBLIC_KEYS" => Some(jwt::DEV_PUBLIC_KEY.into()),
                "TRAFFIC_VERDICT" => Some(v.to_owned()),
                _ => None,
            })
        };
        assert!(!with("ignore").expect("valid").honour_traffic_verdict);
        assert!(with("honour").expect("valid").honour_traffic_verdict);
        let err = with("sometimes").expect_err("invalid");
        assert!(err.to_string().contains("TRAFFIC_VERDICT"), "{err}");
    }

    #[test]
    fn amqp_url_is_optional_plain_amqp_and_never_echoed() {
        // Unset means events off; a URL that is not amqp:// is refused naming the variable,
        // without showing its password.
        let with = |v: &'static str| {
            Config::from_lookup(move |k| match k {
                "JWT_PUBLIC_KEYS" => Some(jwt::DEV_PUBLIC_KEY.into()),
                "AMQP_URL" => Some(v.to_owned()),
                _ => None,
            })
        };
        assert_eq!(with("  ").expect("blank is unset").amqp_url, None);
        let url = "amqp://orders:s3cret@rabbitmq:5672/%2f";
        assert_eq!(with(url).expect("valid").amqp_url.as_deref(), Some(url));
        for bad in [
            "amqps://orders:s3cret@rabbitmq/%2f",
            "http://orders:s3cret@rabbitmq/",
        ] {
            let err = with(bad).expect_err("refused");
            assert!(err.to_string().contains("AMQP_URL"), "{err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }
}
