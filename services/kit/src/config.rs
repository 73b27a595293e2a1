//! Service configuration read from the environment.
//!
//! Every variable has a documented default; a value that is set but invalid is an error that
//! names the variable, so a typo in a manifest fails loudly at start-up instead of silently
//! falling back. Parsing goes through a lookup function so tests never touch the process
//! environment.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// Default listen address: every interface, port 8080 (the port the manifests declare).
pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:8080";

/// A configuration value that is missing or cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The variable is set but its value is not usable.
    #[error("environment variable {var} has an invalid value {value:?}: {reason}")]
    Invalid {
        /// Variable name, e.g. `LISTEN_ADDR`.
        var: &'static str,
        /// The offending value as given.
        value: String,
        /// What was expected instead.
        reason: String,
    },
    /// The variable is required and not set.
    #[error("environment variable {var} is required: {hint}")]
    Missing {
        /// Variable name, e.g. `JWT_SECRET`.
        var: &'static str,
        /// How to fix it.
        hint: &'static str,
    },
}

/// Log output format, chosen by `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected `text` or `json`".to_owned()),
        }
    }
}

/// Settings every sample service shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// `LISTEN_ADDR`: where the HTTP server binds (default `0.0.0.0:8080`).
    pub listen_addr: SocketAddr,
    /// `POD_IP`: the pod's own address when the platform provides it; logged, never required.
    pub pod_ip: Option<IpAddr>,
    /// `LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// `ADMIN_TOKEN`: enables `/admin/faults` when set and non-empty.
    pub admin_token: Option<String>,
    /// `SHUTDOWN_DELAY_MS` (default 1000): after SIGTERM, how long the server keeps accepting
    /// while reporting not-ready, so endpoint controllers stop routing to it first.
    pub shutdown_delay: Duration,
    /// `DRAIN_TIMEOUT_MS` (default 20000): how long in-flight requests may take to finish
    /// after the listener closes; kept below Kubernetes' default 30 s grace period.
    pub drain_timeout: Duration,
}

impl ServiceConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `lookup` (a variable name to its value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_lookup_with_default(lookup, DEFAULT_LISTEN_ADDR)
    }

    /// Like [`Self::from_lookup`], with a different default listen address (a developer mode
    /// may pick a loopback port so two services can run side by side).
    pub fn from_lookup_with_default(
        lookup: impl Fn(&str) -> Option<String>,
        default_listen: &str,
    ) -> Result<Self, ConfigError> {
        let listen_addr = match non_empty(&lookup, "LISTEN_ADDR") {
            Some(v) => parse_value("LISTEN_ADDR", &v, "expected host:port, e.g. 0.0.0.0:8080")?,
            None => parse_value("LISTEN_ADDR", default_listen, "invalid built-in default")?,
        };
        let pod_ip = non_empty(&lookup, "POD_IP")
            .map(|v| parse_value("POD_IP", &v, "expected an IP address"))
            .transpose()?;
        let log_format = match non_empty(&lookup, "LOG_FORMAT") {
            Some(v) => v.parse().map_err(|reason| ConfigError::Invalid {
                var: "LOG_FORMAT",
                value: v.clone(),
                reason,
            })?,
            None => LogFormat::Text,
        };
        Ok(Self {
            listen_addr,
            pod_ip,
            log_format,
            admin_token: non_empty(&lookup, "ADMIN_TOKEN"),
            shutdown_delay: millis(&lookup, "SHUTDOWN_DELAY_MS", 1_000)?,
            drain_timeout: millis(&lookup, "DRAIN_TIMEOUT_MS", 20_000)?,
        })
    }
}

/// Returns the variable's value when it is set and not blank.
pub fn non_empty(lookup: &impl Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    lookup(var).filter(|v| !v.trim().is_empty())
}

/// Parses `value` for `var`, turning a parse failure into a [`ConfigError`] naming `var`.
pub fn parse_value<T: FromStr>(
    var: &'static str,
    value: &str,
    expected: &str,
) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason: expected.to_owned(),
    })
}

/// Reads a duration given in whole milliseconds, with a default when unset.
pub fn millis(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default_ms: u64,
) -> Result<Duration, ConfigError> {
    match non_empty(lookup, var) {
        Some(v) => parse_value::<u64>(var, &v, "expected a whole number of milliseconds")
            .map(Duration::from_millis),
        None => Ok(Duration::from_millis(default_ms)),
    }
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
    fn defaults_apply_when_nothing_is_set() {
        // An empty environment yields the documented defaults.
        let cfg = ServiceConfig::from_lookup(lookup(&[])).expect("defaults parse");
        assert_eq!(cfg.listen_addr, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(cfg.pod_ip, None);
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.admin_token, None);
        assert_eq!(cfg.drain_timeout, Duration::from_secs(20));
    }

    #[test]
    fn values_are_read() {
        // Set variables override the defaults.
        let cfg = ServiceConfig::from_lookup(lookup(&[
            ("LISTEN_ADDR", "127.2.0.5:9000"),
            ("POD_IP", "127.2.0.5"),
            ("LOG_FORMAT", "JSON"),
            ("ADMIN_TOKEN", "s3cret"),
            ("SHUTDOWN_DELAY_MS", "0"),
        ]))
        .expect("parse");
        assert_eq!(cfg.listen_addr, "127.2.0.5:9000".parse().expect("addr"));
        assert_eq!(cfg.pod_ip, Some("127.2.0.5".parse().expect("ip")));
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(cfg.shutdown_delay, Duration::ZERO);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        // A malformed value is reported with the variable's name, never silently defaulted.
        let err = ServiceConfig::from_lookup(lookup(&[("LISTEN_ADDR", "localhost")]))
            .expect_err("must fail");
        assert!(matches!(
            err,
            ConfigError::Invalid {
                var: "LISTEN_ADDR",
                ..
            }
        ));
        assert!(err.to_string().contains("LISTEN_ADDR"));
        let err = ServiceConfig::from_lookup(lookup(&[("DRAIN_TIMEOUT_MS", "soon")]))
            .expect_err("must fail");
        assert!(matches!(
            err,
            ConfigError::Invalid {
                var: "DRAIN_TIMEOUT_MS",
                ..
            }
        ));
        let err = ServiceConfig::from_lookup(lookup(&[("LOG_FORMAT", "xml")])).expect_err("fail");
        assert!(matches!(
            err,
            ConfigError::Invalid {
                var: "LOG_FORMAT",
                ..
            }
        ));
    }

    #[test]
    fn blank_admin_token_disables_admin() {
        // An empty ADMIN_TOKEN must not enable the admin routes with an empty bearer.
        let cfg = ServiceConfig::from_lookup(lookup(&[("ADMIN_TOKEN", "  ")])).expect("parse");
        assert_eq!(cfg.admin_token, None);
    }
}
