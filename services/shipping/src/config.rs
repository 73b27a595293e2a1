//! Configuration of the shipping binary: flags, each also read from its environment variable
//! (clap `env`), so `shipping --help` documents every variable. Checks only; nothing connects.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_kit::config::{at_least_one, default_listen_addr, non_blank, trimmed};
use flotilla_kit::{ConfigError, ServiceArgs, ServiceConfig};

use crate::retry::RetryPolicy;

/// Default database: a SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://shipping.db";

/// The broker `--dev` uses when `AMQP_URL` is unset: a RabbitMQ on this machine with its
/// default user (which RabbitMQ admits from loopback only).
pub const DEV_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where `--dev` listens when `LISTEN_ADDR` is unset, beside users (8080) and auth (8081).
pub const DEV_LISTEN_ADDR: &str = "127.0.0.1:8082";

/// Schedules shipments for placed orders, consuming the fleet's events from RabbitMQ.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "shipping", version)]
pub struct Args {
    /// Shared service settings.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The broker: `amqp://user:pass@host:5672/%2f` (`%2f` is the default virtual host).
    /// Required (with --dev: a RabbitMQ on 127.0.0.1:5672 as guest).
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Database: `sqlite://<file>`, `sqlite::memory:` or `postgres://user:pass@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Messages delivered to this pod and not yet acknowledged (AMQP prefetch, `basic.qos`):
    /// how many events it handles at once. At most 65535.
    #[arg(long, env = "SHIPPING_PREFETCH", default_value_t = 16, value_parser = at_least_one::<u16>)]
    pub prefetch: u16,
    /// Handling attempts of one event before it is dead-lettered; failures that are not
    /// transient are dead-lettered at once.
    #[arg(long, env = "SHIPPING_MAX_ATTEMPTS", default_value_t = 5, value_parser = at_least_one::<u32>)]
    pub max_attempts: u32,
    /// Wait before the first retry of a failed event, in milliseconds; it doubles with each
    /// further attempt up to SHIPPING_RETRY_MAX_MS.
    #[arg(long, env = "SHIPPING_RETRY_BASE_MS", default_value_t = 1_000, value_parser = at_least_one::<u64>)]
    pub retry_base_ms: u64,
    /// Longest wait between two attempts of one event, in milliseconds.
    #[arg(long, env = "SHIPPING_RETRY_MAX_MS", default_value_t = 60_000, value_parser = at_least_one::<u64>)]
    pub retry_max_ms: u64,
    /// Longest wait between two attempts to reach the broker, in milliseconds; the wait starts
    /// at 250 ms and doubles up to this.
    #[arg(long, env = "AMQP_RECONNECT_MAX_MS", default_value_t = 10_000, value_parser = at_least_one::<u64>)]
    pub reconnect_max_ms: u64,
    /// Developer mode: listen on 127.0.0.1:8082 and use a local RabbitMQ as guest when
    /// LISTEN_ADDR and AMQP_URL are unset.
    #[arg(long, env = "SHIPPING_DEV")]
    pub dev: bool,
}

/// Everything the shipping service reads at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared service settings (`LISTEN_ADDR`, `LOG_FORMAT`, `ADMIN_TOKEN`, ...).
    pub service: ServiceConfig,
    /// `AMQP_URL`.
    pub amqp_url: String,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `SHIPPING_PREFETCH`.
    pub prefetch: u16,
    /// `SHIPPING_MAX_ATTEMPTS`, `SHIPPING_RETRY_BASE_MS`, `SHIPPING_RETRY_MAX_MS`.
    pub retry: RetryPolicy,
    /// `AMQP_RECONNECT_MAX_MS`.
    pub reconnect_max: Duration,
    /// Whether developer mode filled in a default.
    pub dev: bool,
}

impl Args {
    /// Checks what clap cannot and resolves defaults.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let database_url =
            non_blank(Some(&self.database_url)).unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        if flotilla_kit::db::Backend::from_url(&database_url).is_err() {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                value: flotilla_kit::db::redact(&database_url),
                reason: "expected a sqlite:// or postgres:// URL".into(),
            });
        }
        let amqp_url = match non_blank(self.amqp_url.as_deref()) {
            Some(url) => url,
            None if self.dev => DEV_AMQP_URL.to_owned(),
            None => {
                return Err(ConfigError::Missing {
                    var: "AMQP_URL",
                    hint: "the RabbitMQ to consume from, e.g. amqp://user:pass@rabbitmq:5672/%2f \
                           (or --dev for a local one)",
                })
            }
        };
        if let Err(e) = amqp_url.parse::<lapin::uri::AMQPUri>() {
            return Err(ConfigError::Invalid {
                var: "AMQP_URL",
                value: flotilla_kit::db::redact(&amqp_url),
                reason: format!("not an amqp:// URL: {e}"),
            });
        }
        let default_listen = if self.dev {
            trimmed::<SocketAddr>(DEV_LISTEN_ADDR).unwrap_or_else(|_| default_listen_addr())
        } else {
            default_listen_addr()
        };
        let service = self.service.resolve(default_listen)?;
        if self.retry_max_ms < self.retry_base_ms {
            return Err(ConfigError::Invalid {
                var: "SHIPPING_RETRY_MAX_MS",
                value: self.retry_max_ms.to_string(),
                reason: format!(
                    "must be at least SHIPPING_RETRY_BASE_MS ({})",
                    self.retry_base_ms
                ),
            });
        }
        Ok(Config {
            service,
            amqp_url,
            database_url,
            prefetch: self.prefetch,
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                base: Duration::from_millis(self.retry_base_ms),
                max: Duration::from_millis(self.retry_max_ms),
            },
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            dev: self.dev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let mut args = vec!["shipping"];
        args.extend_from_slice(extra);
        Args::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .resolve()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn amqp_url_is_required_and_named() {
        // Without a broker the service cannot do its job: start-up fails naming AMQP_URL,
        // unless developer mode supplies the local one.
        let err = parse(&[]).expect_err("no broker");
        assert!(err.contains("AMQP_URL"), "{err}");
        let cfg = parse(&["--dev"]).expect("dev");
        assert_eq!(cfg.amqp_url, DEV_AMQP_URL);
        assert_eq!(cfg.service.listen_addr.to_string(), DEV_LISTEN_ADDR);
        let err = parse(&["--amqp-url", "http://broker"]).expect_err("not amqp");
        assert!(err.contains("AMQP_URL"), "{err}");
    }

    #[test]
    fn defaults_and_bounds() {
        // The documented defaults apply, and limits that would switch handling off are refused
        // by name.
        let cfg = parse(&["--amqp-url", "amqp://u:p@rabbitmq:5672/%2f"]).expect("defaults");
        assert_eq!(cfg.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(cfg.prefetch, 16);
        assert_eq!(cfg.retry.max_attempts, 5);
        assert_eq!(cfg.retry.base, Duration::from_secs(1));
        assert_eq!(cfg.service.listen_addr.to_string(), "0.0.0.0:8080");
        let err = parse(&["--amqp-url", "amqp://h", "--prefetch", "0"]).expect_err("zero");
        assert!(
            err.contains("SHIPPING_PREFETCH") || err.contains("prefetch"),
            "{err}"
        );
        let err = parse(&["--amqp-url", "amqp://h", "--database-url", "mysql://x"])
            .expect_err("unsupported");
        assert!(err.contains("DATABASE_URL"), "{err}");
        let err = parse(&[
            "--amqp-url",
            "amqp://h",
            "--retry-base-ms",
            "5000",
            "--retry-max-ms",
            "100",
        ])
        .expect_err("max below base");
        assert!(err.contains("SHIPPING_RETRY_MAX_MS"), "{err}");
    }

    #[test]
    fn help_documents_every_variable() {
        // `shipping --help` names the shared variables and its own.
        let help = <Args as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for var in [
            "LISTEN_ADDR",
            "LOG_FORMAT",
            "ADMIN_TOKEN",
            "AMQP_URL",
            "DATABASE_URL",
            "SHIPPING_PREFETCH",
            "SHIPPING_MAX_ATTEMPTS",
            "SHIPPING_RETRY_BASE_MS",
            "SHIPPING_RETRY_MAX_MS",
            "AMQP_RECONNECT_MAX_MS",
            "SHIPPING_DEV",
        ] {
            assert!(
                help.contains(&format!("env: {var}")),
                "{var} missing:\n{help}"
            );
        }
    }
}
