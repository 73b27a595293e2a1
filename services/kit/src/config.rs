//! Service configuration: command-line flags, each also read from the environment variable of
//! the same name through clap's `env` support, so `--help` lists every variable with its
//! default.
//!
//! Every variable has a documented default; a value that is set but invalid is an error that
//! names the variable, so a typo in a manifest fails loudly at start-up instead of silently
//! falling back. Blank values count as unset. Services flatten [`ServiceArgs`] into their own
//! `clap::Parser` and add their variables next to it.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// Default listen address: every interface, port 8080 (the port the manifests declare).
pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:8080";

/// A configuration value that is missing or cannot be used (checks clap cannot express).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The variable is set but its value is not usable.
    #[error("environment variable {var} has an invalid value {value:?}: {reason}")]
    Invalid {
        /// Variable name, e.g. `LISTEN_ADDR`.
        var: &'static str,
        /// The offending value as given (or `<redacted>` for secrets).
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
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected `text` or `json`".to_owned()),
        }
    }
}

/// Parses a value after trimming surrounding whitespace (manifests often carry a stray space).
pub fn trimmed<T: FromStr>(value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e: T::Err| e.to_string())
}

/// Flags and variables every sample service shares. Flatten into a service's parser.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ServiceArgs {
    /// Address the HTTP server binds [default: 0.0.0.0:8080, or the service's own].
    #[arg(long, env = "LISTEN_ADDR", value_parser = trimmed::<SocketAddr>)]
    pub listen_addr: Option<SocketAddr>,
    /// The pod's own address when the platform provides it; logged, never required.
    #[arg(long, env = "POD_IP", value_parser = trimmed::<IpAddr>)]
    pub pod_ip: Option<IpAddr>,
    /// Log format, `text` or `json` (RUST_LOG filters, default info).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = trimmed::<LogFormat>)]
    pub log_format: LogFormat,
    /// Bearer token that enables /admin/faults (fault injection); unset or blank disables it.
    /// Refused at start-up when it is a placeholder or too easy to guess.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// After SIGTERM, how long the server keeps accepting while reporting not-ready, so
    /// endpoint controllers stop routing to it first.
    #[arg(long, env = "SHUTDOWN_DELAY_MS", default_value_t = 1_000, value_parser = trimmed::<u64>)]
    pub shutdown_delay_ms: u64,
    /// How long in-flight requests may take to finish after the listener closes; below
    /// Kubernetes' default 30 s grace period.
    #[arg(long, env = "DRAIN_TIMEOUT_MS", default_value_t = 20_000, value_parser = trimmed::<u64>)]
    pub drain_timeout_ms: u64,
    /// Most connections served at once for any request. When all are taken, a new client
    /// takes the place of the connection idle longest; when none is idle it gets a health
    /// slot (below) or waits in the listen backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1_024, value_parser = trimmed::<usize>)]
    pub max_connections: usize,
    /// Connections kept beyond MAX_CONNECTIONS for health and metrics only (`/healthz`,
    /// `/readyz`, `/metrics`, gRPC health checks), so probes answer while every other slot is
    /// busy; any other request on them gets 503. Probes and a scraper need one each.
    #[arg(long, env = "HEALTH_CONNECTIONS", default_value_t = 8, value_parser = at_least_one::<usize>)]
    pub health_connections: usize,
    /// A client must send a request's complete headers within this time, or the connection
    /// is closed (slow-header clients cannot hold connections open). HTTP/1.1 times the wait
    /// for the next request on a keep-alive connection the same way.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = trimmed::<u64>)]
    pub header_read_timeout_ms: u64,
    /// A connection with no request in progress (a fresh one that sent nothing, an idle
    /// keep-alive one, an HTTP/2 one with no open stream) is closed after this time.
    #[arg(long, env = "IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = at_least_one::<u64>)]
    pub idle_timeout_ms: u64,
    /// A request body must arrive completely within this time of the request's headers;
    /// otherwise the request is answered 408 and its HTTP/1.1 connection closed.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = at_least_one::<u64>)]
    pub body_read_timeout_ms: u64,
    /// How often an HTTP/2 connection is pinged when the peer has sent nothing meanwhile.
    #[arg(long, env = "H2_KEEPALIVE_INTERVAL_MS", default_value_t = 20_000, value_parser = at_least_one::<u64>)]
    pub h2_keepalive_interval_ms: u64,
    /// An HTTP/2 peer that does not answer a ping within this time is disconnected.
    #[arg(long, env = "H2_KEEPALIVE_TIMEOUT_MS", default_value_t = 10_000, value_parser = at_least_one::<u64>)]
    pub h2_keepalive_timeout_ms: u64,
}

/// Like [`trimmed`], refusing zero: for timeouts and sizes where zero would switch a limit off
/// or make the server useless.
pub fn at_least_one<T>(value: &str) -> Result<T, String>
where
    T: FromStr + PartialOrd + From<u8>,
    T::Err: std::fmt::Display,
{
    let parsed: T = trimmed(value)?;
    if parsed < T::from(1) {
        return Err("must be at least 1".to_owned());
    }
    Ok(parsed)
}

/// Settings every sample service shares, resolved from [`ServiceArgs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// `LISTEN_ADDR`: where the HTTP server binds.
    pub listen_addr: SocketAddr,
    /// `POD_IP`.
    pub pod_ip: Option<IpAddr>,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `ADMIN_TOKEN`: enables `/admin/faults` when set and non-blank.
    pub admin_token: Option<String>,
    /// `SHUTDOWN_DELAY_MS` (default 1000).
    pub shutdown_delay: Duration,
    /// `DRAIN_TIMEOUT_MS` (default 20000).
    pub drain_timeout: Duration,
    /// `MAX_CONNECTIONS` (default 1024).
    pub max_connections: usize,
    /// `HEALTH_CONNECTIONS` (default 8).
    pub health_connections: usize,
    /// `HEADER_READ_TIMEOUT_MS` (default 10000).
    pub header_read_timeout: Duration,
    /// `IDLE_TIMEOUT_MS` (default 60000).
    pub idle_timeout: Duration,
    /// `BODY_READ_TIMEOUT_MS` (default 10000).
    pub body_read_timeout: Duration,
    /// `H2_KEEPALIVE_INTERVAL_MS` (default 20000).
    pub h2_keepalive_interval: Duration,
    /// `H2_KEEPALIVE_TIMEOUT_MS` (default 10000).
    pub h2_keepalive_timeout: Duration,
}

impl ServiceArgs {
    /// Resolves the arguments; `default_listen` applies when `LISTEN_ADDR` is unset. Refuses
    /// a guessable `ADMIN_TOKEN` (see [`check_secret`]).
    pub fn resolve(&self, default_listen: SocketAddr) -> Result<ServiceConfig, ConfigError> {
        let admin_token = non_blank(self.admin_token.as_deref());
        if let Some(token) = &admin_token {
            check_secret("ADMIN_TOKEN", token, MIN_TOKEN_LEN)?;
        }
        Ok(ServiceConfig {
            listen_addr: self.listen_addr.unwrap_or(default_listen),
            pod_ip: self.pod_ip,
            log_format: self.log_format,
            admin_token,
            shutdown_delay: Duration::from_millis(self.shutdown_delay_ms),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            max_connections: self.max_connections.max(1),
            health_connections: self.health_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            h2_keepalive_interval: Duration::from_millis(self.h2_keepalive_interval_ms),
            h2_keepalive_timeout: Duration::from_millis(self.h2_keepalive_timeout_ms),
        })
    }
}

impl ServiceConfig {
    /// Reads the shared settings through `lookup` (variable name to value) instead of the
    /// process environment, for services that read their own variables the same way. The
    /// values go through the same clap parser as flags; an invalid one names its variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        const VARS: &[(&str, &str)] = &[
            ("LISTEN_ADDR", "--listen-addr"),
            ("POD_IP", "--pod-ip"),
            ("LOG_FORMAT", "--log-format"),
            ("ADMIN_TOKEN", "--admin-token"),
            ("SHUTDOWN_DELAY_MS", "--shutdown-delay-ms"),
            ("DRAIN_TIMEOUT_MS", "--drain-timeout-ms"),
            ("MAX_CONNECTIONS", "--max-connections"),
            ("HEALTH_CONNECTIONS", "--health-connections"),
            ("HEADER_READ_TIMEOUT_MS", "--header-read-timeout-ms"),
            ("IDLE_TIMEOUT_MS", "--idle-timeout-ms"),
            ("BODY_READ_TIMEOUT_MS", "--body-read-timeout-ms"),
            ("H2_KEEPALIVE_INTERVAL_MS", "--h2-keepalive-interval-ms"),
            ("H2_KEEPALIVE_TIMEOUT_MS", "--h2-keepalive-timeout-ms"),
        ];
        #[derive(Debug, clap::Parser)]
        struct Only {
            #[command(flatten)]
            service: ServiceArgs,
        }
        let mut argv = vec!["service".to_owned()];
        for (var, flag) in VARS {
            if let Some(v) = non_empty(&lookup, var) {
                argv.push(format!("{flag}={v}"));
            }
        }
        let parsed = <Only as clap::Parser>::try_parse_from(argv).map_err(|e| {
            let text = e.to_string();
            let var = VARS
                .iter()
                .map(|(var, _)| *var)
                .find(|var| text.contains(var))
                .unwrap_or("environment");
            ConfigError::Invalid {
                var,
                value: String::new(),
                reason: text.lines().next().unwrap_or_default().to_owned(),
            }
        })?;
        parsed.service.resolve(default_listen_addr())
    }
}

/// Returns the variable's value through `lookup` when it is set and not blank.
pub fn non_empty(lookup: &impl Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    lookup(var).filter(|v| !v.trim().is_empty())
}

/// The default listen address as a value.
pub fn default_listen_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// The value when it is set and not blank.
pub fn non_blank(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty()).map(str::to_owned)
}

/// Shortest accepted bearer token (`ADMIN_TOKEN`, service credentials), in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// Least estimated entropy of an accepted secret, in bits.
pub const MIN_SECRET_BITS: f64 = 64.0;

/// Words that mark a value as a placeholder someone forgot to replace.
const PLACEHOLDER_WORDS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "placeholder",
    "example",
    "your-secret",
    "yoursecret",
    "do-not-use",
    "insecure",
];

/// Refuses a secret that is a known placeholder, shorter than `min_len` bytes, or whose
/// estimated entropy (length times the Shannon entropy of its characters) is under
/// [`MIN_SECRET_BITS`] — `aaaaaaaa…`, `1234567812345678`. The error never echoes the value.
pub fn check_secret(var: &'static str, value: &str, min_len: usize) -> Result<(), ConfigError> {
    let refuse = |reason: String| ConfigError::Invalid {
        var,
        value: "<redacted>".into(),
        reason,
    };
    let lower = value.to_ascii_lowercase();
    if let Some(word) = PLACEHOLDER_WORDS.iter().find(|w| lower.contains(*w)) {
        return Err(refuse(format!(
            "looks like a placeholder (contains {word:?}); generate one, e.g. `openssl rand -hex 32`"
        )));
    }
    if value.len() < min_len {
        return Err(refuse(format!("must be at least {min_len} bytes")));
    }
    let bits = estimated_bits(value);
    if bits < MIN_SECRET_BITS {
        return Err(refuse(format!(
            "too easy to guess (about {bits:.0} bits, want {MIN_SECRET_BITS:.0}); generate one, \
             e.g. `openssl rand -hex 32`"
        )));
    }
    Ok(())
}

/// Length times the Shannon entropy per byte of `value`: a rough upper bound of its strength.
pub fn estimated_bits(value: &str) -> f64 {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for b in bytes {
        counts[usize::from(*b)] += 1;
    }
    let n = bytes.len() as f64;
    let per_byte: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum();
    per_byte * n
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        service: ServiceArgs,
    }

    fn parse(args: &[&str]) -> Result<ServiceConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("svc").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.service
            .resolve(default_listen_addr())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        // No flags (and, in the test process, none of the variables) yield the documented
        // defaults.
        let cfg = parse(&[]).expect("defaults parse");
        assert_eq!(cfg.listen_addr, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(cfg.pod_ip, None);
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.admin_token, None);
        assert_eq!(cfg.shutdown_delay, Duration::from_secs(1));
        assert_eq!(cfg.drain_timeout, Duration::from_secs(20));
        assert_eq!(cfg.max_connections, 1024);
        assert_eq!(cfg.header_read_timeout, Duration::from_secs(10));
        assert_eq!(cfg.health_connections, 8);
        assert_eq!(cfg.idle_timeout, Duration::from_secs(60));
        assert_eq!(cfg.body_read_timeout, Duration::from_secs(10));
        assert_eq!(cfg.h2_keepalive_interval, Duration::from_secs(20));
        assert_eq!(cfg.h2_keepalive_timeout, Duration::from_secs(10));
    }

    #[test]
    fn connection_limits_are_read_and_zero_is_refused() {
        // Each connection limit takes its value; zero would switch a limit off, so it stops
        // start-up naming the variable, as a malformed value does.
        let cfg = parse(&[
            "--health-connections",
            "2",
            "--idle-timeout-ms",
            "1500",
            "--body-read-timeout-ms",
            " 700",
            "--h2-keepalive-interval-ms",
            "300",
            "--h2-keepalive-timeout-ms",
            "400",
        ])
        .expect("parse");
        assert_eq!(cfg.health_connections, 2);
        assert_eq!(cfg.idle_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.body_read_timeout, Duration::from_millis(700));
        assert_eq!(cfg.h2_keepalive_interval, Duration::from_millis(300));
        assert_eq!(cfg.h2_keepalive_timeout, Duration::from_millis(400));
        for (flag, var) in [
            ("--health-connections", "HEALTH_CONNECTIONS"),
            ("--idle-timeout-ms", "IDLE_TIMEOUT_MS"),
            ("--body-read-timeout-ms", "BODY_READ_TIMEOUT_MS"),
            ("--h2-keepalive-interval-ms", "H2_KEEPALIVE_INTERVAL_MS"),
            ("--h2-keepalive-timeout-ms", "H2_KEEPALIVE_TIMEOUT_MS"),
        ] {
            for value in ["0", "soon", "-5"] {
                let err = parse(&[&format!("{flag}={value}")]).expect_err(value);
                assert!(err.contains(var), "{flag}={value}: {err}");
            }
        }
        let err = ServiceConfig::from_lookup(|k| (k == "IDLE_TIMEOUT_MS").then(|| "0".into()))
            .expect_err("zero");
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    var: "IDLE_TIMEOUT_MS",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn values_are_read() {
        // Given values override the defaults, with surrounding blanks trimmed.
        let cfg = parse(&[
            "--listen-addr",
            " 127.2.0.5:9000",
            "--pod-ip",
            "127.2.0.5",
            "--log-format",
            "JSON",
            "--admin-token",
            "Zq3v9TkL2xW8pR4m",
            "--shutdown-delay-ms",
            "0",
        ])
        .expect("parse");
        assert_eq!(cfg.listen_addr, "127.2.0.5:9000".parse().expect("addr"));
        assert_eq!(cfg.pod_ip, Some("127.2.0.5".parse().expect("ip")));
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.admin_token.as_deref(), Some("Zq3v9TkL2xW8pR4m"));
        assert_eq!(cfg.shutdown_delay, Duration::ZERO);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        // A malformed value is reported with the variable's name, never silently defaulted.
        for (flag, value, var) in [
            ("--listen-addr", "localhost", "LISTEN_ADDR"),
            ("--drain-timeout-ms", "soon", "DRAIN_TIMEOUT_MS"),
            ("--log-format", "xml", "LOG_FORMAT"),
        ] {
            let err = parse(&[flag, value]).expect_err("must fail");
            assert!(err.contains(var), "{err}");
        }
    }

    #[test]
    fn blank_admin_token_disables_admin() {
        // An empty ADMIN_TOKEN must not enable the admin routes with an empty bearer.
        let cfg = parse(&["--admin-token", "  "]).expect("parse");
        assert_eq!(cfg.admin_token, None);
    }

    #[test]
    fn guessable_admin_tokens_are_refused_without_echo() {
        // Placeholders, short tokens and repetitive ones stop start-up; the error never
        // prints the value.
        for bad in [
            "change-me-users-admin-token",
            "s3cret",
            "aaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababab",
        ] {
            let err = parse(&["--admin-token", bad]).expect_err(bad);
            assert!(err.contains("ADMIN_TOKEN"), "{err}");
            assert!(!err.contains(bad), "{err}");
        }
        assert!(parse(&["--admin-token", "9f2c1e7a4b8d0c3e6f1a5b9d"]).is_ok());
    }

    #[test]
    fn lookup_goes_through_the_same_parser() {
        // Services reading variables through a lookup get the same values and errors.
        let cfg = ServiceConfig::from_lookup(|k| match k {
            "LISTEN_ADDR" => Some("127.0.0.1:9001".into()),
            "ADMIN_TOKEN" => Some(" ".into()),
            _ => None,
        })
        .expect("parse");
        assert_eq!(cfg.listen_addr, "127.0.0.1:9001".parse().expect("addr"));
        assert_eq!(cfg.admin_token, None);
        let err = ServiceConfig::from_lookup(|k| (k == "DRAIN_TIMEOUT_MS").then(|| "soon".into()))
            .expect_err("invalid");
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    var: "DRAIN_TIMEOUT_MS",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn help_documents_every_variable() {
        // `--help` names each variable the kit reads.
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for var in [
            "LISTEN_ADDR",
            "POD_IP",
            "LOG_FORMAT",
            "ADMIN_TOKEN",
            "SHUTDOWN_DELAY_MS",
            "DRAIN_TIMEOUT_MS",
            "MAX_CONNECTIONS",
            "HEADER_READ_TIMEOUT_MS",
            "HEALTH_CONNECTIONS",
            "IDLE_TIMEOUT_MS",
            "BODY_READ_TIMEOUT_MS",
            "H2_KEEPALIVE_INTERVAL_MS",
            "H2_KEEPALIVE_TIMEOUT_MS",
        ] {
            assert!(
                help.contains(&format!("env: {var}")),
                "{var} missing:\n{help}"
            );
        }
    }
}
