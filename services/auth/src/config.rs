//! Configuration of the auth binary, from the environment and the `--dev` switch.
//!
//! Outside developer mode `JWT_SECRET` and `USERS_URL` are required and start-up fails with
//! an error naming the missing variable. Developer mode (`--dev` or `AUTH_DEV_SECRET=1`)
//! supplies a fixed, public signing secret and local defaults so the service starts with
//! one command next to a local users service; it is never implied.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_kit::config::{check_secret, default_listen_addr, non_blank, trimmed, MIN_TOKEN_LEN};
use flotilla_kit::{ConfigError, ServiceArgs, ServiceConfig};
use reqwest::Url;

use crate::breaker::BreakerConfig;
use crate::client::ClientConfig;

/// Shortest accepted `JWT_SECRET`, in bytes (HS256 wants at least 256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// Signing secret of developer mode. Public, so tokens signed with it prove nothing.
pub use flotilla_kit::jwt::DEV_SECRET;

/// Service credential of developer mode, the one `users --dev` accepts. Public.
pub use flotilla_kit::credentials::DEV_SERVICE_TOKEN;

/// `USERS_URL` default in developer mode: a users service started with `cargo run -p users`.
pub const DEV_USERS_URL: &str = "http://127.0.0.1:8080";

/// `LISTEN_ADDR` default in developer mode, next to users on 8080.
pub const DEV_LISTEN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8081);

/// Login and token verification for Flotilla's sample services.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "auth", version)]
pub struct Args {
    /// Shared service settings.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Developer mode: use the public development JWT secret and service credential when
    /// JWT_SECRET or USERS_SERVICE_TOKEN are unset, and default USERS_URL to
    /// http://127.0.0.1:8080 and LISTEN_ADDR to 127.0.0.1:8081.
    #[arg(long, env = "AUTH_DEV_SECRET")]
    pub dev: bool,
    /// HS256 key the tokens are signed with, at least 32 bytes, random (refused when it is a
    /// placeholder or too easy to guess). Required outside developer mode.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Credential auth presents to users' credential check (POST /users/verify); users must
    /// be given the same value. Required outside developer mode.
    #[arg(long, env = "USERS_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
    /// Base URL of the users service (plain http://); Flotilla injects it for the `users`
    /// dependency. Required outside developer mode.
    #[arg(long, env = "USERS_URL")]
    pub users_url: Option<String>,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, env = "TOKEN_TTL_SECONDS", default_value_t = 3_600, value_parser = trimmed::<u64>)]
    pub token_ttl_seconds: u64,
    /// Timeout of one call to users, connect included, in milliseconds.
    #[arg(long, env = "USERS_TIMEOUT_MS", default_value_t = 2_000, value_parser = trimmed::<u64>)]
    pub users_timeout_ms: u64,
    /// Consecutive failed calls to users that open the circuit breaker.
    #[arg(long, env = "BREAKER_FAILURES", default_value_t = 5, value_parser = trimmed::<u32>)]
    pub breaker_failures: u32,
    /// How long the breaker stays open before one trial call, in milliseconds.
    #[arg(long, env = "BREAKER_OPEN_MS", default_value_t = 10_000, value_parser = trimmed::<u64>)]
    pub breaker_open_ms: u64,
    /// Login attempts a minute per account (email), in bursts of as many; over it /login
    /// answers 429 with Retry-After. 0 disables.
    #[arg(long, env = "LOGIN_LIMIT_PER_ACCOUNT", default_value_t = crate::DEFAULT_LIMIT_PER_ACCOUNT, value_parser = trimmed::<u32>)]
    pub login_limit_per_account: u32,
    /// Login attempts a minute per client address. 0 disables.
    #[arg(long, env = "LOGIN_LIMIT_PER_ADDRESS", default_value_t = crate::DEFAULT_LIMIT_PER_ADDRESS, value_parser = trimmed::<u32>)]
    pub login_limit_per_address: u32,
}

/// Everything auth reads at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared service settings.
    pub service: ServiceConfig,
    /// `USERS_URL`: base URL of the users service (plain HTTP).
    pub users_url: Url,
    /// `JWT_SECRET` (or the developer secret).
    pub jwt_secret: Vec<u8>,
    /// `USERS_SERVICE_TOKEN` (or the developer credential).
    pub service_token: String,
    /// Whether developer mode supplied defaults.
    pub dev: bool,
    /// `TOKEN_TTL_SECONDS` (default 3600).
    pub token_ttl: Duration,
    /// `USERS_TIMEOUT_MS` (default 2000), `BREAKER_FAILURES` (default 5),
    /// `BREAKER_OPEN_MS` (default 10000).
    pub client: ClientConfig,
    /// `LOGIN_LIMIT_PER_ACCOUNT` and `LOGIN_LIMIT_PER_ADDRESS`, attempts a minute.
    pub login_limits: (u32, u32),
}

impl Args {
    /// Checks what clap cannot and applies developer-mode defaults.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let dev = self.dev;
        let default_listen = if dev {
            DEV_LISTEN_ADDR
        } else {
            default_listen_addr()
        };
        let service = self.service.resolve(default_listen)?;

        let jwt_secret =
            match non_blank(self.jwt_secret.as_deref()) {
                Some(s) => {
                    check_secret("JWT_SECRET", &s, MIN_SECRET_LEN)?;
                    s.into_bytes()
                }
                None if dev => DEV_SECRET.as_bytes().to_vec(),
                None => return Err(ConfigError::Missing {
                    var: "JWT_SECRET",
                    hint: "set it to a random string of at least 32 bytes (openssl rand -hex 32), \
                           or start with --dev (or AUTH_DEV_SECRET=1) to use the public \
                           development secret",
                }),
            };

        let service_token = match non_blank(self.service_token.as_deref()) {
            Some(t) => {
                check_secret("USERS_SERVICE_TOKEN", &t, MIN_TOKEN_LEN)?;
                t
            }
            None if dev => DEV_SERVICE_TOKEN.to_owned(),
            None => {
                return Err(ConfigError::Missing {
                    var: "USERS_SERVICE_TOKEN",
                    hint: "the credential users expects on its credential check, the same value \
                           as users' USERS_SERVICE_TOKEN (openssl rand -hex 24)",
                })
            }
        };

        let users_raw = match non_blank(self.users_url.as_deref()) {
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
        let defaults = ClientConfig::default();
        let client = ClientConfig {
            timeout: Duration::from_millis(self.users_timeout_ms),
            breaker: BreakerConfig {
                failure_threshold: self.breaker_failures.max(1),
                open_for: Duration::from_millis(self.breaker_open_ms),
            },
            ..defaults
        };
        Ok(Config {
            service,
            users_url,
            jwt_secret,
            service_token,
            dev,
            token_ttl: Duration::from_secs(self.token_ttl_seconds),
            client,
            login_limits: (self.login_limit_per_account, self.login_limit_per_address),
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
    use clap::Parser;

    const SECRET: &str = "Kf8d2LqW9zX4vB7nM1pR6tY3hJ5gC0sA";
    const SERVICE: &str = "Vq7m2Xk9Lp4Wz8Rt";

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let args = Args::try_parse_from(std::iter::once("auth").chain(args.iter().copied()))
            .map_err(|e| ConfigError::Invalid {
                var: "ARGS",
                value: String::new(),
                reason: e.to_string(),
            })?;
        args.resolve()
    }

    #[test]
    fn refuses_to_start_without_secret() {
        // No JWT_SECRET and no dev mode is an error naming the variable.
        let err = parse(&["--users-url", "http://users:8080"]).expect_err("must refuse");
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
    fn weak_secrets_are_refused_without_echoing_them() {
        // Short, placeholder and low-entropy secrets are refused; the error never prints them.
        for weak in [
            "tooshort",
            "change-me-0123456789abcdef0123456789abcdef",
            "abcabcabcabcabcabcabcabcabcabcabcabc",
        ] {
            let err =
                parse(&["--users-url", "http://u", "--jwt-secret", weak]).expect_err("must refuse");
            assert!(err.to_string().contains("JWT_SECRET"), "{err}");
            assert!(!err.to_string().contains(weak), "{err}");
        }
    }

    #[test]
    fn dev_mode_supplies_local_defaults() {
        // --dev alone is enough to start next to a local users service.
        let cfg = parse(&["--dev"]).expect("dev defaults");
        assert_eq!(cfg.jwt_secret, DEV_SECRET.as_bytes());
        assert_eq!(cfg.users_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(cfg.service.listen_addr, DEV_LISTEN_ADDR);
        assert_eq!(cfg.service_token, DEV_SERVICE_TOKEN);
    }

    #[test]
    fn production_mode_reads_everything() {
        // Explicit values are used as given; USERS_URL is required.
        let cfg = parse(&[
            "--users-url",
            "http://users.ns.svc:8080/api",
            "--jwt-secret",
            SECRET,
            "--service-token",
            SERVICE,
            "--breaker-failures",
            "2",
            "--token-ttl-seconds",
            "60",
        ])
        .expect("valid");
        assert_eq!(cfg.users_url.as_str(), "http://users.ns.svc:8080/api/");
        assert_eq!(cfg.client.breaker.failure_threshold, 2);
        assert_eq!(cfg.token_ttl, Duration::from_secs(60));
        assert_eq!(cfg.service.listen_addr.to_string(), "0.0.0.0:8080");
        let err = parse(&["--jwt-secret", SECRET]).expect_err("service token required");
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: "USERS_SERVICE_TOKEN",
                ..
            }
        ));
        let err = parse(&["--jwt-secret", SECRET, "--service-token", "short"]).expect_err("weak");
        assert!(err.to_string().contains("USERS_SERVICE_TOKEN"), "{err}");
        let err = parse(&["--jwt-secret", SECRET, "--service-token", SERVICE])
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

    #[test]
    fn help_documents_every_variable() {
        // `auth --help` names every variable auth reads.
        let help = <Args as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for var in [
            "LISTEN_ADDR",
            "ADMIN_TOKEN",
            "AUTH_DEV_SECRET",
            "JWT_SECRET",
            "USERS_SERVICE_TOKEN",
            "USERS_URL",
            "TOKEN_TTL_SECONDS",
            "USERS_TIMEOUT_MS",
            "BREAKER_FAILURES",
            "BREAKER_OPEN_MS",
            "LOGIN_LIMIT_PER_ACCOUNT",
            "LOGIN_LIMIT_PER_ADDRESS",
        ] {
            assert!(
                help.contains(&format!("env: {var}")),
                "{var} missing:\n{help}"
            );
        }
    }
}
