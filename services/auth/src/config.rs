//! Configuration of the auth binary, from the environment and the `--dev` switch.
//!
//! Outside developer mode `JWT_SECRET` and `USERS_URL` are required and start-up fails with
//! an error naming the missing variable. Developer mode (`--dev` or `AUTH_DEV_SECRET=1`)
//! supplies a fixed, public signing secret and local defaults so the service starts with
//! one command next to a local users service; it is never implied.

use std::time::Duration;

use flotilla_kit::config::{millis, non_empty, parse_value};
use flotilla_kit::{ConfigError, ServiceConfig};
use reqwest::Url;

use crate::breaker::BreakerConfig;
use crate::client::ClientConfig;

/// Shortest accepted `JWT_SECRET`, in bytes (HS256 wants at least 256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// Signing secret of developer mode. Public, so tokens signed with it prove nothing.
pub const DEV_SECRET: &str = "flotilla-dev-secret-do-not-use-in-production";

/// `USERS_URL` default in developer mode: a users service started with `cargo run -p users`.
pub const DEV_USERS_URL: &str = "http://127.0.0.1:8080";

/// `LISTEN_ADDR` default in developer mode, next to users on 8080.
pub const DEV_LISTEN_ADDR: &str = "127.0.0.1:8081";

/// Everything auth reads at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared service settings.
    pub service: ServiceConfig,
    /// `USERS_URL`: base URL of the users service (plain HTTP).
    pub users_url: Url,
    /// `JWT_SECRET` (or the developer secret).
    pub jwt_secret: Vec<u8>,
    /// Whether developer mode supplied defaults.
    pub dev: bool,
    /// `TOKEN_TTL_SECONDS` (default 3600).
    pub token_ttl: Duration,
    /// `USERS_TIMEOUT_MS` (default 2000), `BREAKER_FAILURES` (default 5),
    /// `BREAKER_OPEN_MS` (default 10000).
    pub client: ClientConfig,
}

impl Config {
    /// Reads the configuration through `lookup`; `dev` enables developer mode.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        dev: bool,
    ) -> Result<Self, ConfigError> {
        let default_listen = if dev {
            DEV_LISTEN_ADDR
        } else {
            flotilla_kit::config::DEFAULT_LISTEN_ADDR
        };
        let service = ServiceConfig::from_lookup_with_default(&lookup, default_listen)?;

        let jwt_secret = match non_empty(&lookup, "JWT_SECRET") {
            Some(s) if s.len() < MIN_SECRET_LEN => {
                return Err(ConfigError::Invalid {
                    var: "JWT_SECRET",
                    value: "<redacted>".into(),
                    reason: format!("must be at least {MIN_SECRET_LEN} bytes"),
                })
            }
            Some(s) => s.into_bytes(),
            None if dev => DEV_SECRET.as_bytes().to_vec(),
            None => {
                return Err(ConfigError::Missing {
                    var: "JWT_SECRET",
                    hint: "set it to a random string of at least 32 bytes, or start with --dev \
                           (or AUTH_DEV_SECRET=1) to use the public development secret",
                })
            }
        };

        let users_raw = match non_empty(&lookup, "USERS_URL") {
            Some(u) => u,
            None if dev => DEV_USERS_URL.to_owned(),
            None => {
                return Err(ConfigError::Missing {
                    var: "USERS_URL",
                    hint: "the base URL of the users service, e.g. http://users:8080 \
                           (Flotilla injects it for a dependency named users)",
                })
            }
        };
        let users_url = parse_users_url(&users_raw)?;

        let token_ttl = match non_empty(&lookup, "TOKEN_TTL_SECONDS") {
            Some(v) => Duration::from_secs(parse_value::<u64>(
                "TOKEN_TTL_SECONDS",
                &v,
                "expected a whole number of seconds",
            )?),
            None => Duration::from_secs(3600),
        };
        let defaults = ClientConfig::default();
        let failure_threshold = match non_empty(&lookup, "BREAKER_FAILURES") {
            Some(v) => parse_value::<u32>("BREAKER_FAILURES", &v, "expected a whole number")?,
            None => defaults.breaker.failure_threshold,
        }
        .max(1);
        let client = ClientConfig {
            timeout: millis(&lookup, "USERS_TIMEOUT_MS", 2_000)?,
            breaker: BreakerConfig {
                failure_threshold,
                open_for: millis(&lookup, "BREAKER_OPEN_MS", 10_000)?,
            },
            ..defaults
        };
        Ok(Self {
            service,
            users_url,
            jwt_secret,
            dev,
            token_ttl,
            client,
        })
    }
}

/// Parses `USERS_URL`: plain `http://` only (no TLS inside the cluster), path ending in `/`
/// so relative joins keep any prefix.
pub fn parse_users_url(raw: &str) -> Result<Url, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        var: "USERS_URL",
        value: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "http" {
        return Err(invalid("only http:// is supported (this build has no TLS)"));
    }
    if url.host_str().is_none() {
        return Err(invalid("missing host"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn refuses_to_start_without_secret() {
        // No JWT_SECRET and no dev mode is an error naming the variable.
        let err = Config::from_lookup(lookup(&[("USERS_URL", "http://users:8080")]), false)
            .expect_err("must refuse");
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: "JWT_SECRET",
                ..
            }
        ));
        assert!(err.to_string().contains("JWT_SECRET"));
    }

    #[test]
    fn short_secret_is_refused_without_echoing_it() {
        // A weak secret is refused, and the error never prints it.
        let err = Config::from_lookup(
            lookup(&[("USERS_URL", "http://u"), ("JWT_SECRET", "tooshort")]),
            false,
        )
        .expect_err("must refuse");
        assert!(!err.to_string().contains("tooshort"));
    }

    #[test]
    fn dev_mode_supplies_local_defaults() {
        // --dev alone is enough to start next to a local users service.
        let cfg = Config::from_lookup(lookup(&[]), true).expect("dev defaults");
        assert_eq!(cfg.jwt_secret, DEV_SECRET.as_bytes());
        assert_eq!(cfg.users_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(cfg.service.listen_addr.to_string(), DEV_LISTEN_ADDR);
    }

    #[test]
    fn production_mode_reads_everything() {
        // Explicit variables are used as given; USERS_URL is required.
        let secret = "s".repeat(40);
        let cfg = Config::from_lookup(
            lookup(&[
                ("USERS_URL", "http://users.ns.svc:8080/api"),
                ("JWT_SECRET", &secret),
                ("BREAKER_FAILURES", "2"),
                ("TOKEN_TTL_SECONDS", "60"),
            ]),
            false,
        )
        .expect("valid");
        assert_eq!(cfg.users_url.as_str(), "http://users.ns.svc:8080/api/");
        assert_eq!(cfg.client.breaker.failure_threshold, 2);
        assert_eq!(cfg.token_ttl, Duration::from_secs(60));
        assert_eq!(cfg.service.listen_addr.to_string(), "0.0.0.0:8080");
        let err = Config::from_lookup(lookup(&[("JWT_SECRET", &secret)]), false)
            .expect_err("USERS_URL required");
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: "USERS_URL",
                ..
            }
        ));
    }

    #[test]
    fn users_url_must_be_plain_http() {
        // https and garbage are refused by name; TLS is out of scope for this build.
        assert!(parse_users_url("https://users").is_err());
        assert!(parse_users_url("users:8080").is_err());
        assert!(parse_users_url("http://users:8080").is_ok());
    }
}
