//! The command line: global flags as kubectl spells them (`-n`, `--context`, `--kubeconfig`),
//! one subcommand each, and the client they share.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::commands::{self, Request, Target};
use crate::error::Error;

/// Flotilla's MicroServices from the command line.
#[derive(Debug, Parser)]
#[command(name = "kubectl flotilla", version)]
pub struct Cli {
    /// The namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,

    /// The kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,

    /// The kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`, else in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The service as a tree: MicroService, stable and canary Deployments, pods with their
    /// verdicts, traffic target, rollout phase and revisions, the last Events.
    Get {
        name: String,
        /// Draw again on every change of the MicroService or its pods.
        #[arg(short, long)]
        watch: bool,
    },
    /// The MicroServices of the namespace: readiness, traffic target, rollout phase.
    List {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// When traffic last moved and how the last release ended, with their evidence and Events.
    Why { name: String },
    /// Waits for the current release to finish: exit 0 when it did, 1 when it was rolled back or
    /// is degraded, 2 when the timeout runs out first.
    Status {
        name: String,
        /// How long to wait, e.g. `90s`, `5m`.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Analyses a rolled-back release again (the `flotilla.rs/rollout-retry` annotation).
    Retry(RequestArgs),
    /// Promotes the release under analysis now (the `flotilla.rs/rollout-promote` annotation).
    Promote {
        #[command(flatten)]
        request: RequestArgs,
        /// Promote to every pod at once. Flotilla's canary has one step, so every promotion is
        /// full; the flag is accepted for scripts written for Argo Rollouts.
        #[arg(long)]
        full: bool,
    },
    /// Rolls the release under analysis back now (the `flotilla.rs/rollout-abort` annotation).
    Abort(RequestArgs),
    /// Holds promotion: a release that passes its analysis waits (`spec.rollout.paused: true`).
    Pause { name: String },
    /// Lets a release that passed its analysis be promoted (`spec.rollout.paused: false`).
    Resume { name: String },
    /// The revision history: every template that became stable or was rolled back, with its
    /// image, outcome, time and who changed the spec.
    History { name: String },
    /// Holds the traffic on the fallback for maintenance, whatever the primary's health, until
    /// `failback` (`spec.failover.holdOnFallback: true`).
    Failover(HoldArgs),
    /// Releases the hold: traffic returns once the primary has been healthy for
    /// `recoverAfterSeconds` (`spec.failover.holdOnFallback: false`).
    Failback(HoldArgs),
    /// Serves the fleet in a browser on this machine, with your kubeconfig: every service's
    /// readiness, traffic and rollout, one service's pods with their verdicts, and a timeline of
    /// failovers, ejections and rollouts, kept current by watches. Read-only.
    Dashboard {
        /// Where to listen. Anyone who can reach the address reads what your kubeconfig may
        /// read: keep it on loopback.
        #[arg(long, default_value = crate::dashboard::DEFAULT_ADDRESS)]
        address: std::net::SocketAddr,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Goes back to a previous good template at once, without an analysis.
    Undo {
        name: String,
        /// The history's revision number to go back to (default: the newest good one before
        /// the stable template).
        #[arg(long)]
        to_revision: Option<i64>,
        /// How long to wait for the template to be stable again.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// The arguments of a one-shot request.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    pub name: String,
    /// How long to wait for the operator to acknowledge the request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The arguments of `failover` and `failback`.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    pub name: String,
    /// How long to wait for the traffic to follow.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Runs the parsed command line, printing to stdout.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let target = connect(&cli).await?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Get { name, watch } => commands::get(&target, &name, watch, &mut out).await,
        Command::List { all_namespaces } => commands::list(&target, all_namespaces, &mut out).await,
        Command::Why { name } => commands::why(&target, &name, &mut out).await,
        Command::Status { name, timeout } => {
            commands::status(&target, &name, timeout, &mut out).await
        }
        Command::Retry(a) => request(&target, a, Request::Retry, &mut out).await,
        Command::Promote { request: a, .. } => {
            request(&target, a, Request::Promote, &mut out).await
        }
        Command::Abort(a) => request(&target, a, Request::Abort, &mut out).await,
        Command::Pause { name } => commands::set_paused(&target, &name, true, &mut out).await,
        Command::Resume { name } => commands::set_paused(&target, &name, false, &mut out).await,
        Command::Failover(a) => {
            crate::traffic::set_hold(&target, &a.name, true, a.timeout, &mut out).await
        }
        Command::Failback(a) => {
            crate::traffic::set_hold(&target, &a.name, false, a.timeout, &mut out).await
        }
        Command::History { name } => commands::history(&target, &name, &mut out).await,
        Command::Dashboard {
            address,
            all_namespaces,
        } => {
            let options = crate::dashboard::Options {
                address,
                all_namespaces,
            };
            crate::dashboard::run(&target, options, &mut out).await
        }
        Command::Undo {
            name,
            to_revision,
            timeout,
        } => commands::undo(&target, &name, to_revision, timeout, &mut out).await,
    }
}

async fn request(
    target: &Target,
    a: RequestArgs,
    request: Request,
    out: &mut impl std::io::Write,
) -> Result<(), Error> {
    commands::request(target, &a.name, request, a.timeout, out).await
}

/// The client and namespace from the flags and the kubeconfig, as kubectl picks them.
async fn connect(cli: &Cli) -> Result<Target, Error> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| Error::Config(e.to_string()))?
        }
        None => match Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            Err(kubeconfig) => Config::incluster()
                .map_err(|_| Error::Config(format!("no usable kubeconfig: {kubeconfig}")))?,
        },
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
    Ok(Target { client, namespace })
}

/// `30s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 5m or 1h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations read as kubectl's `--timeout` does for whole units; anything else is refused
    /// with the value named.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5x").is_err_and(|e| e.contains("\"5x\"")));
        assert!(parse_duration("m").is_err());
    }

    /// `promote --full` parses (scripts written for Argo Rollouts pass it); it asks for the same
    /// promotion as `promote`.
    #[test]
    fn promote_accepts_full() {
        let cli = Cli::try_parse_from(["kubectl-flotilla", "promote", "users", "--full"]);
        assert!(
            matches!(cli.map(|c| c.command), Ok(Command::Promote { full: true, ref request } ) if request.name == "users"),
        );
    }
}
