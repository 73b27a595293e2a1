//! Configuration of the auth binary, from the environment and the `--dev` switch.
//!
//! Outside developer mode `JWT_SIGNING_KEY`, `USERS_SERVICE_TOKEN` and `USERS_URL` are required
//! and start-up fails with an error naming the missing variable. Developer mode (`--dev` or
//! `AUTH_DEV_SECRET=1`) supplies a fixed, public signing key and local defaults so the service
//! starts with one command next to a local users service; it is never implied. `JWT_SECRET`
//! (the HS256 secret of earlier releases) is refused, naming what replaced it.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_kit::config::{check_secret, default_listen_addr, non_blank, trimmed, MIN_TOKEN_LEN};
use flotilla_kit::jwt::{self, PublicKey, SigningKey, AUDIENCE_ORDERS, AUDIENCE_USERS};
use flotilla_kit::{ConfigError, ServiceArgs, ServiceConfig};
use reqwest::Url;

use crate::breaker::BreakerConfig;
use crate::client::ClientConfig;

/// Signing key of developer mode. Public, so tokens signed with it prove nothing.
pub use flotilla_kit::jwt::DEV_SIGNING_KEY;

/// Audiences of issued tokens when `TOKEN_AUDIENCES` is not set: the sample services that
/// accept auth's tokens.
pub const DEFAULT_AUDIENCES: &str = "users,orders";

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
    /// Developer mode: use the public development signing key and service credential when
    /// JWT_SIGNING_KEY or USERS_SERVICE_TOKEN are unset, and default USERS_URL to
    /// http://127.0.0.1:8080 and LISTEN_ADDR to 127.0.0.1:8081.
    #[arg(long, env = "AUTH_DEV_SECRET")]
    pub dev: bool,
    /// Ed25519 private key the tokens are signed with, PKCS#8 PEM (openssl genpkey -algorithm
    /// ed25519). Its public half is published at /.well-known/jwks.json under its RFC 7638
    /// thumbprint as kid. Required outside developer mode.
    #[arg(
        long,
        env = "JWT_SIGNING_KEY",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub signing_key: Option<String>,
    /// Keys signed with before the current one (PEM public or private keys, or a JWKS):
    /// published and accepted so their tokens stay valid until they expire, never used to sign.
    #[arg(long, env = "JWT_PREVIOUS_KEYS", allow_hyphen_values = true)]
    pub previous_keys: Option<String>,
    /// Comma-separated audiences (aud) every token names: the services that accept it.
    #[arg(long, env = "TOKEN_AUDIENCES", default_value = DEFAULT_AUDIENCES)]
    pub token_audiences: String,
    /// No longer read: refused with an error naming JWT_SIGNING_KEY, which replaced it.
    #[arg(long, env = "JWT_SECRET", hide = true, hide_env_values = true)]
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
    /// `JWT_SIGNING_KEY` (or the developer key).
    pub signing_key: SigningKey,
    /// `JWT_PREVIOUS_KEYS`: published and accepted, never used to sign.
    pub previous_keys: Vec<PublicKey>,
    /// `TOKEN_AUDIENCES` (default `users,orders`).
    pub audiences: Vec<String>,
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

        jwt::refuse_shared_secret(self.jwt_secret.as_deref())?;
        let signing_key = match non_blank(self.signing_key.as_deref()) {
            Some(pem) => {
                let key = SigningKey::from_pem(&pem).map_err(|e| ConfigError::Invalid {
                    var: "JWT_SIGNING_KEY",
                    value: "<redacted>".into(),
                    reason: e.to_string(),
                })?;
                if !dev && key.public_key() == dev_key()?.public_key() {
                    return Err(ConfigError::Invalid {
                        var: "JWT_SIGNING_KEY",
                        value: "<redacted>".into(),
                        reason: "this is the public development key; generate one with \
                                 openssl genpkey -algorithm ed25519"
                            .into(),
                    });
                }
                key
            }
            None if dev => dev_key()?,
            None => {
                return Err(ConfigError::Missing {
                    var: "JWT_SIGNING_KEY",
                    hint: "set it to an Ed25519 private key in PKCS#8 PEM \
                           (openssl genpkey -algorithm ed25519), or start with --dev (or \
                           AUTH_DEV_SECRET=1) to use the public development key",
                })
            }
        };
        let previous_keys = match non_blank(self.previous_keys.as_deref()) {
            Some(text) => jwt::public_keys_from("JWT_PREVIOUS_KEYS", &text)?,
            None => Vec::new(),
        };
        let audiences = parse_audiences(&self.token_audiences)?;

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
            signing_key,
            previous_keys,
            audiences,
            service_token,
            dev,
            token_ttl: Duration::from_secs(self.token_ttl_seconds),
            client,
            login_limits: (self.login_limit_per_account, self.login_limit_per_address),
        })
    }
}

fn dev_key() -> Result<SigningKey, ConfigError> {
    SigningKey::from_pem(DEV_SIGNING_KEY).map_err(|e| ConfigError::Invalid {
        var: "AUTH_DEV_SECRET",
        value: "1".into(),
        reason: e.to_string(),
    })
}

/// Parses `TOKEN_AUDIENCES`: one or more of the services that accept auth's tokens.
pub fn parse_audiences(raw: &str) -> Result<Vec<String>, ConfigError> {
    let mut audiences: Vec<String> = Vec::new();
    for a in raw.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if ![AUDIENCE_USERS, AUDIENCE_ORDERS].contains(&a) {
            return Err(ConfigError::Invalid {
                var: "TOKEN_AUDIENCES",
                value: raw.to_owned(),
                reason: format!(
                    "unknown audience {a:?}; expected {AUDIENCE_USERS} and/or {AUDIENCE_ORDERS}"
                ),
            });
        }
        if !audiences.iter().any(|x| x == a) {
            audiences.push(a.to_owned());
        }
    }
    if audiences.is_empty() {
        return Err(ConfigError::Invalid {
            var: "TOKEN_AUDIENCES",
            value: raw.to_owned(),
            reason: "name at least one audience".into(),
        });
    }
    Ok(audiences)
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

    const SERVICE: &str = "Vq7m2Xk9Lp4Wz8Rt";

    fn key_pem() -> String {
        SigningKey::generate().expect("key").to_pem()
    }

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
    fn refuses_to_start_without_signing_key() {
        // No JWT_SIGNING_KEY and no dev mode is an error naming the variable.
        let err = parse(&["--users-url", "http://users:8080"]).expect_err("must refuse");
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: "JWT_SIGNING_KEY",
                ..
            }
        ));
        assert!(err.to_string().contains("JWT_SIGNING_KEY"));
    }

    #[test]
    fn the_old_shared_secret_is_refused_naming_its_replacement() {
        // A leftover JWT_SECRET stops start-up, even in dev mode, and says what replaced it
        // without echoing the value.
        let secret = "Kf8d2LqW9zX4vB7nM1pR6tY3hJ5gC0sA";
        for extra in [&["--dev"][..], &["--users-url", "http://u"][..]] {
            let mut args = vec!["--jwt-secret", secret];
            args.extend_from_slice(extra);
            let err = parse(&args).expect_err("must refuse");
            let text = err.to_string();
            assert!(
                text.contains("JWT_SECRET") && text.contains("JWT_SIGNING_KEY"),
                "{text}"
            );
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn unusable_keys_are_refused_without_echoing_them() {
        // An HS256-style secret, a public key, or the public development key outside dev mode
        // are refused by name; the error never prints the value.
        let public = SigningKey::generate().expect("key").public_key().to_pem();
        for bad in [
            "Kf8d2LqW9zX4vB7nM1pR6tY3hJ5gC0sA",
            public.as_str(),
            DEV_SIGNING_KEY,
        ] {
            let err =
                parse(&["--users-url", "http://u", "--signing-key", bad]).expect_err("must refuse");
            assert!(err.to_string().contains("JWT_SIGNING_KEY"), "{err}");
            assert!(!err.to_string().contains(bad.trim()), "{err}");
        }
        let err = parse(&["--dev", "--token-audiences", "billing"]).expect_err("unknown");
        assert!(err.to_string().contains("TOKEN_AUDIENCES"), "{err}");
    }

    #[test]
    fn dev_mode_supplies_local_defaults() {
        // --dev alone is enough to start next to a local users service.
        let cfg = parse(&["--dev"]).expect("dev defaults");
        assert_eq!(
            cfg.signing_key.public_key(),
            SigningKey::from_pem(DEV_SIGNING_KEY)
                .expect("dev")
                .public_key()
        );
        assert_eq!(cfg.audiences, ["users", "orders"]);
        assert_eq!(cfg.users_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(cfg.service.listen_addr, DEV_LISTEN_ADDR);
        assert_eq!(cfg.service_token, DEV_SERVICE_TOKEN);
    }

    #[test]
    fn production_mode_reads_everything() {
        // Explicit values are used as given; USERS_URL is required.
        let key = key_pem();
        let previous = SigningKey::generate().expect("key");
        let previous_pem = previous.public_key().to_pem();
        let cfg = parse(&[
            "--users-url",
            "http://users.ns.svc:8080/api",
            "--signing-key",
            &key,
            "--previous-keys",
            &previous_pem,
            "--token-audiences",
            "orders",
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
        assert_eq!(cfg.previous_keys, [previous.public_key().clone()]);
        assert_eq!(cfg.audiences, ["orders"]);
        let err = parse(&["--signing-key", &key]).expect_err("service token required");
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: "USERS_SERVICE_TOKEN",
                ..
            }
        ));
        let err = parse(&["--signing-key", &key, "--service-token", "short"]).expect_err("weak");
        assert!(err.to_string().contains("USERS_SERVICE_TOKEN"), "{err}");
        let err = parse(&["--signing-key", &key, "--service-token", SERVICE])
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
            "JWT_SIGNING_KEY",
            "JWT_PREVIOUS_KEYS",
            "TOKEN_AUDIENCES",
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
