//! `auth` binary: reads flags and environment, binds, serves until SIGTERM.

use anyhow::Context;
use auth::config::Args;
use clap::Parser;
use flotilla_kit::ratelimit::CredentialLimits;
use flotilla_kit::server::serve_until_signal;
use flotilla_kit::telemetry::init_tracing;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = args.resolve()?;
    let _telemetry = init_tracing(config.service.log_format, "auth")?;
    if config.dev && args.signing_key.is_none() {
        tracing::warn!("developer mode: tokens are signed with the public development key");
    }
    if config.dev && args.service_token.is_none() {
        tracing::warn!("developer mode: users is called with the public development credential");
    }
    let tokens = auth::Signer::new(
        config.signing_key.clone(),
        config.previous_keys.clone(),
        config.audiences.clone(),
        config.token_ttl,
    );
    tracing::info!(kid = tokens.kid(), audiences = ?tokens.audiences(), published = tokens.jwks().keys.len(), "signing key loaded");
    let mut service = auth::build(
        config.users_url.clone(),
        &config.service_token,
        config.client,
        tokens,
        config.service.admin_token.clone(),
    )?;
    let (per_account, per_address) = config.login_limits;
    service.state.limits = CredentialLimits::new(per_account, per_address);
    let listener = tokio::net::TcpListener::bind(config.service.listen_addr)
        .await
        .with_context(|| format!("binding LISTEN_ADDR {}", config.service.listen_addr))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        pod_ip = %config.service.pod_ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
        users = %config.users_url,
        admin = config.service.admin_token.is_some(),
        "auth listening"
    );
    let stopped = serve_until_signal(
        listener,
        service.filter(),
        service.kit.health.clone(),
        &config.service,
    )
    .await;
    tracing::info!(?stopped, "auth stopped");
    Ok(())
}
