//! `flotilla-operator`: parses flags, starts telemetry, and runs one command of the library.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use flotilla_operator::cli::{Cli, Command, RenderArgs, RunArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().into_command() {
        Command::Crd => crd(),
        Command::Render(args) => render(&args),
        Command::Run(args) => run(*args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn crd() -> anyhow::Result<ExitCode> {
    print!("{}", flotilla_crds::crd_yaml()?);
    Ok(ExitCode::SUCCESS)
}

fn render(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let input = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    match flotilla_operator::render::render(&input, &args.namespace) {
        Ok(r) => {
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", r.yaml);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested; finishing in-flight work");
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let _telemetry = flotilla_operator::telemetry::init(args.log_format);
    let config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration (KUBECONFIG or in-cluster)")?;
    let client = flotilla_operator::kube_client::build(config, args.client_timeouts())?;
    flotilla_operator::run(client, args.to_config(), shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
