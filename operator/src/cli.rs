//! Command-line interface of `flotilla-operator`. Parsing only; `main.rs` dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use flotilla_crds::ServiceType;

use std::time::Duration;

use crate::admission::{parse_image_prefix, parse_service_type, AdmissionPolicy};
use crate::config::{OperatorConfig, DEFAULT_CONCURRENCY};
use crate::health::DEFAULT_STALL_AFTER;
use crate::kube_client::{ClientTimeouts, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
use crate::notify::{Format, UrlSource, WebhookConfig, DEFAULT_RETRIES, DEFAULT_TIMEOUT};
use crate::telemetry::LogFormat;

/// The Flotilla operator: runs MicroServices as Deployments, Services, ConfigMaps and
/// HorizontalPodAutoscalers and keeps them converged.
#[derive(Debug, Parser)]
#[command(
    name = "flotilla-operator",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run`, accepted without the subcommand name.
    #[command(flatten)]
    pub run: RunArgs,
}

impl Cli {
    /// The command to execute, `run` when none was given.
    pub fn into_command(self) -> Command {
        self.command
            .unwrap_or_else(|| Command::Run(Box::new(self.run)))
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller against the cluster from KUBECONFIG or the in-cluster config (boxed:
    /// its flags outweigh the other commands many times).
    Run(Box<RunArgs>),
    /// Print the MicroService CustomResourceDefinition as YAML.
    Crd,
    /// Print the objects the operator would apply for MicroService manifests, without a cluster.
    Render(RenderArgs),
}

/// Flags of `run`; each can also be set through the environment variable shown.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "FLOTILLA_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Log format (the RUST_LOG variable filters, default info).
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Elect a leader on the Lease `flotilla-operator` so several replicas can run; only the
    /// leader reconciles.
    #[arg(long, env = "FLOTILLA_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else the kubeconfig namespace).
    #[arg(long, env = "FLOTILLA_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// MicroServices reconciled concurrently.
    #[arg(long, env = "FLOTILLA_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: u16,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "FLOTILLA_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Seconds to open a connection to the Kubernetes API server.
    #[arg(long, env = "FLOTILLA_API_CONNECT_TIMEOUT_SECONDS", default_value_t = DEFAULT_CONNECT_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub api_connect_timeout_seconds: u64,
    /// Seconds a Kubernetes API request other than a watch may wait for its response (watches
    /// idle by design and are not cut).
    #[arg(long, env = "FLOTILLA_API_REQUEST_TIMEOUT_SECONDS", default_value_t = DEFAULT_REQUEST_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub api_request_timeout_seconds: u64,
    /// Seconds without progress (reconciles in flight none finishing, or no probe round) after
    /// which /healthz answers 503 with the reason.
    #[arg(long, env = "FLOTILLA_STALL_AFTER_SECONDS", default_value_t = DEFAULT_STALL_AFTER.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_after_seconds: u64,
    /// PEM file with the Ed25519 private key that signs traffic verdicts (PKCS#8, as
    /// `openssl genpkey -algorithm ed25519` writes). Every replica must use the same key; without
    /// one, a key is made up at start-up (enough for a single replica).
    #[arg(long, env = "FLOTILLA_VERDICT_KEY_FILE", value_name = "FILE")]
    pub verdict_key_file: Option<PathBuf>,
    /// PEM file with the next verdict key during a rotation: pods are given it to trust, the
    /// current key still signs.
    #[arg(long, env = "FLOTILLA_VERDICT_NEXT_KEY_FILE", value_name = "FILE")]
    pub verdict_next_key_file: Option<PathBuf>,
    /// Let `failover.stickyConnections: Restart` evict pods (needs create on pods/eviction);
    /// off, such services are reported as with `Report`.
    #[arg(long, env = "FLOTILLA_STICKY_RESTARTS", default_value_t = false)]
    pub sticky_restarts: bool,
    /// Keep a readiness watch open on each pod that supports one, so a pod's own readiness
    /// change or its death moves traffic at once; `false` probes every pod each period only.
    #[arg(long, env = "FLOTILLA_READINESS_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub readiness_watch: bool,
    /// Roll a MicroService's pods when a Secret or ConfigMap value its `env` references changes
    /// (a digest of the referenced values in the pod template). Needs get, list and watch on
    /// Secrets; off, templates carry no digest and Secrets are not watched.
    #[arg(
        long,
        env = "FLOTILLA_ROLLOUT_ON_CONFIG_CHANGE",
        default_value_t = false
    )]
    pub rollout_on_config_change: bool,
    /// Images MicroServices may run: comma-separated prefixes of `spec.image` as written, each
    /// ending with '/', ':' or '@' (e.g. `registry.example.com/shop/,flotilla/users:`). A
    /// MicroService with another image is not applied and reports `PolicyRefused`. Unset: any
    /// image.
    #[arg(long, env = "FLOTILLA_ALLOWED_IMAGE_PREFIXES", value_delimiter = ',',
          value_name = "PREFIX", value_parser = parse_image_prefix)]
    pub allowed_image_prefixes: Vec<String>,
    /// ServiceAccounts MicroService pods may run as: comma-separated names, valid in every
    /// namespace; an unset `spec.serviceAccountName` counts as `default`. Unset: any.
    #[arg(
        long,
        env = "FLOTILLA_ALLOWED_SERVICE_ACCOUNTS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub allowed_service_accounts: Vec<String>,
    /// Service types MicroServices may ask for: comma-separated `ClusterIP`, `NodePort`,
    /// `LoadBalancer`. Unset: any.
    #[arg(long, env = "FLOTILLA_ALLOWED_SERVICE_TYPES", value_delimiter = ',',
          value_name = "TYPE", value_parser = parse_service_type)]
    pub allowed_service_types: Vec<ServiceType>,
    /// URL the operator POSTs significant Events to (failovers, failbacks, flapping, rollouts
    /// promoted or rolled back). Unset: no notifications. A Slack webhook URL is a credential:
    /// set it through the variable from a Secret, or use --notify-webhook-url-file, rather than
    /// a flag anyone who can list processes sees.
    #[arg(
        long,
        env = "FLOTILLA_NOTIFY_WEBHOOK_URL",
        hide_env_values = true,
        value_name = "URL",
        conflicts_with = "notify_webhook_url_file"
    )]
    pub notify_webhook_url: Option<String>,
    /// File holding the webhook URL (a mounted Secret key), read at start-up.
    #[arg(long, env = "FLOTILLA_NOTIFY_WEBHOOK_URL_FILE", value_name = "FILE")]
    pub notify_webhook_url_file: Option<PathBuf>,
    /// Body of a notification: `json` (reason, type, message, object, timestamp, reporting
    /// controller) or `slack` (`{"text": ...}`, one line).
    #[arg(long, env = "FLOTILLA_NOTIFY_WEBHOOK_FORMAT", value_enum, default_value_t = Format::Json)]
    pub notify_webhook_format: Format,
    /// Seconds one attempt may wait for the receiver's answer. Delivery runs on its own task:
    /// a slow receiver never slows reconciling.
    #[arg(long, env = "FLOTILLA_NOTIFY_WEBHOOK_TIMEOUT_SECONDS", default_value_t = DEFAULT_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub notify_webhook_timeout_seconds: u64,
    /// Attempts after a failed one (no answer, 5xx, 408, 429), 1 s apart and doubling.
    #[arg(long, env = "FLOTILLA_NOTIFY_WEBHOOK_RETRIES", default_value_t = DEFAULT_RETRIES,
          value_parser = clap::value_parser!(u32).range(0..=10))]
    pub notify_webhook_retries: u32,
    /// Event reasons notified, comma-separated. Unset: FailedOver, FailedBack, Flapping,
    /// Promoted, RolledBack.
    #[arg(long, env = "FLOTILLA_NOTIFY_REASONS", value_delimiter = ',', value_name = "REASON",
          value_parser = parse_reason)]
    pub notify_reasons: Vec<String>,
}

impl RunArgs {
    /// The runtime configuration these flags describe.
    pub fn to_config(&self) -> OperatorConfig {
        OperatorConfig {
            metrics_addr: Some(self.metrics_addr),
            leader_election: self.leader_election,
            leader_election_namespace: self.leader_election_namespace.clone(),
            concurrency: self.concurrency,
            watch_namespace: self.watch_namespace.clone(),
            stall_after: Duration::from_secs(self.stall_after_seconds),
            verdict_key_file: self.verdict_key_file.clone(),
            verdict_next_key_file: self.verdict_next_key_file.clone(),
            sticky_restarts: self.sticky_restarts,
            readiness_watch: self.readiness_watch,
            rollout_on_config_change: self.rollout_on_config_change,
            policy: self.policy(),
            notifications: self.notifications(),
            ..OperatorConfig::default()
        }
    }

    /// The notification webhook these flags describe; `None` without a URL.
    pub fn notifications(&self) -> Option<WebhookConfig> {
        let url = match (&self.notify_webhook_url, &self.notify_webhook_url_file) {
            (Some(url), _) => UrlSource::Value(url.clone()),
            (None, Some(file)) => UrlSource::File(file.clone()),
            (None, None) => return None,
        };
        let mut webhook = WebhookConfig::new(url);
        webhook.format = self.notify_webhook_format;
        webhook.timeout = Duration::from_secs(self.notify_webhook_timeout_seconds);
        webhook.retries = self.notify_webhook_retries;
        if !self.notify_reasons.is_empty() {
            webhook.reasons = self.notify_reasons.clone();
        }
        Some(webhook)
    }

    /// The admission policy these flags describe (blank service account names dropped).
    pub fn policy(&self) -> AdmissionPolicy {
        AdmissionPolicy {
            image_prefixes: self.allowed_image_prefixes.clone(),
            service_accounts: self
                .allowed_service_accounts
                .iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect(),
            service_types: self.allowed_service_types.clone(),
        }
    }

    /// The Kubernetes client's timeouts these flags describe.
    pub fn client_timeouts(&self) -> ClientTimeouts {
        ClientTimeouts {
            connect: Duration::from_secs(self.api_connect_timeout_seconds),
            request: Duration::from_secs(self.api_request_timeout_seconds),
        }
    }
}

/// An Event reason for `--notify-reasons`: a CamelCase word, as Event reasons are.
fn parse_reason(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an Event reason (letters and digits, e.g. FailedOver)"
        ))
    }
}

/// Flags of `render`.
#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    /// File with MicroService YAML documents, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Namespace for MicroServices that do not name one.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The CLI definition is consistent (clap's own checks).
    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// With no flags, `run` yields exactly the library defaults (when no FLOTILLA_* variable is
    /// set).
    #[test]
    fn run_defaults_equal_library_defaults() {
        if std::env::vars().any(|(k, _)| k.starts_with("FLOTILLA_")) {
            return;
        }
        let cli = Cli::parse_from(["flotilla-operator"]);
        match cli.into_command() {
            Command::Run(args) => {
                assert_eq!(args.log_format, LogFormat::Text);
                assert_eq!(args.to_config(), OperatorConfig::default());
                assert_eq!(args.client_timeouts(), ClientTimeouts::default());
            }
            other => panic!("expected run, got {other:?}"),
        }
    }

    /// Subcommands and their flags parse.
    #[test]
    fn subcommands_parse() {
        let cli = Cli::parse_from(["flotilla-operator", "render", "-f", "-", "-n", "shop"]);
        match cli.into_command() {
            Command::Render(a) => {
                assert_eq!(a.file, PathBuf::from("-"));
                assert_eq!(a.namespace, "shop");
            }
            other => panic!("expected render, got {other:?}"),
        }
        let cli = Cli::parse_from([
            "flotilla-operator",
            "run",
            "--leader-election",
            "--concurrency",
            "4",
            "--metrics-addr",
            "127.0.0.1:9090",
            "--log-format",
            "json",
            "--watch-namespace",
            "shop",
            "--api-request-timeout-seconds",
            "5",
            "--stall-after-seconds",
            "30",
            "--rollout-on-config-change",
        ]);
        match cli.into_command() {
            Command::Run(a) => {
                let c = a.to_config();
                assert!(c.leader_election);
                assert_eq!(c.concurrency, 4);
                assert_eq!(c.watch_namespace.as_deref(), Some("shop"));
                assert_eq!(a.log_format, LogFormat::Json);
                assert_eq!(a.client_timeouts().request, Duration::from_secs(5));
                assert_eq!(c.stall_after, Duration::from_secs(30));
                assert!(c.rollout_on_config_change);
            }
            other => panic!("expected run, got {other:?}"),
        }
        assert!(matches!(
            Cli::parse_from(["flotilla-operator", "crd"]).into_command(),
            Command::Crd
        ));
    }

    /// The notification flags make the webhook configuration (none without a URL); the URL comes
    /// from one place only, and a reason that is no Event reason is refused at start-up.
    #[test]
    fn notification_flags_parse() {
        let parsed = Cli::try_parse_from([
            "flotilla-operator",
            "--notify-webhook-url-file",
            "webhook-url",
            "--notify-webhook-format",
            "slack",
            "--notify-webhook-timeout-seconds",
            "2",
            "--notify-webhook-retries",
            "0",
            "--notify-reasons",
            "FailedOver,RolloutHalted",
        ]);
        let webhook = match parsed.map(Cli::into_command) {
            Ok(Command::Run(a)) => a.to_config().notifications,
            other => panic!("expected run, got {other:?}"),
        };
        let mut want = WebhookConfig::new(UrlSource::File(PathBuf::from("webhook-url")));
        want.format = Format::Slack;
        want.timeout = Duration::from_secs(2);
        want.retries = 0;
        want.reasons = vec!["FailedOver".into(), "RolloutHalted".into()];
        assert_eq!(webhook, Some(want));
        for bad in [
            &[
                "--notify-webhook-url",
                "https://a.example/",
                "--notify-webhook-url-file",
                "f",
            ][..],
            &["--notify-reasons", "Failed Over"],
            &["--notify-webhook-timeout-seconds", "0"],
            &["--notify-webhook-format", "xml"],
        ] {
            let parsed = Cli::try_parse_from(["flotilla-operator"].iter().chain(bad));
            assert!(parsed.is_err(), "{bad:?} was accepted");
        }
    }

    /// The policy flags take comma-separated lists into the admission policy; an image prefix
    /// that would admit more than it says, or an unknown Service type, is refused at start-up.
    #[test]
    fn policy_flags_parse() {
        let cli = Cli::try_parse_from([
            "flotilla-operator",
            "--allowed-image-prefixes",
            "registry.example.com/shop/,flotilla/users:",
            "--allowed-service-accounts",
            "default,shop-app",
            "--allowed-service-types",
            "ClusterIP,NodePort",
        ]);
        let policy = match cli.map(Cli::into_command) {
            Ok(Command::Run(a)) => a.to_config().policy,
            other => panic!("expected run, got {other:?}"),
        };
        assert_eq!(
            policy,
            AdmissionPolicy {
                image_prefixes: vec![
                    "registry.example.com/shop/".into(),
                    "flotilla/users:".into()
                ],
                service_accounts: vec!["default".into(), "shop-app".into()],
                service_types: vec![ServiceType::ClusterIP, ServiceType::NodePort],
            }
        );
        for bad in [
            ["--allowed-image-prefixes", "docker.io/library/nginx"],
            ["--allowed-service-types", "ExternalName"],
        ] {
            let parsed = Cli::try_parse_from(["flotilla-operator", bad[0], bad[1]]);
            assert!(parsed.is_err(), "{bad:?} was accepted");
        }
    }
}
