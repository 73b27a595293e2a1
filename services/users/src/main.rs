//! `users` binary: reads the environment, opens the database, binds, serves until SIGTERM.

use anyhow::Context;
use clap::Parser;
use flotilla_kit::ratelimit::CredentialLimits;
use flotilla_kit::server::serve_until_signal;
use flotilla_kit::telemetry::init_tracing;
use users::config::Args;
use users::{db, Db, Passwords};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Args::parse().resolve()?;
    let _telemetry = init_tracing(config.service.log_format, "users")?;
    // The database may be down at start: serve (not ready) and migrate once it answers.
    let db = Db::open(&config.database_url)
        .with_context(|| format!("opening {}", db::redact(&config.database_url)))?;
    let migrating = tokio::spawn({
        let db = db.clone();
        async move { db.migrate_until_ready().await }
    });
    let mut service = users::build(
        db,
        Passwords::new()?
            .with_concurrency(config.hash_concurrency)
            .with_change_concurrency(config.signup_hash_concurrency),
        config.service.admin_token.clone(),
        true,
    )?;
    let (per_account, per_address) = config.verify_limits;
    service.state.limits = CredentialLimits::new(per_account, per_address);
    let (signup_per_address, signup_global) = config.signup_limits;
    service.state.signup_limits = users::SignupLimits::new(signup_per_address, signup_global);
    if config.dev {
        tracing::warn!(
            "developer mode: tokens signed with the public development key are accepted, and the public service credential"
        );
    }
    if config.access.tokens.is_none() {
        tracing::warn!(
            "JWT_PUBLIC_KEYS and AUTH_JWKS_URL unset: every route but sign-up and the credential check answers 401"
        );
    }
    let _jwks = match (&config.jwks_url, &config.access.tokens) {
        (Some(url), Some(verifier)) => Some(flotilla_kit::jwks::spawn_refresh(
            url.clone(),
            verifier.clone(),
        )?),
        _ => None,
    };
    if config.access.service_token.is_none() {
        tracing::warn!("USERS_SERVICE_TOKEN unset: every credential check answers 401");
    }
    service.state.access = std::sync::Arc::new(config.access.clone());
    let listener = tokio::net::TcpListener::bind(config.service.listen_addr)
        .await
        .with_context(|| format!("binding LISTEN_ADDR {}", config.service.listen_addr))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        pod_ip = %config.service.pod_ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
        database = %db::redact(&config.database_url),
        admin = config.service.admin_token.is_some(),
        "users listening"
    );
    let stopped = serve_until_signal(
        listener,
        service.filter(),
        service.kit.health.clone(),
        &config.service,
    )
    .await;
    migrating.abort();
    service.state.db.close().await;
    tracing::info!(?stopped, "users stopped");
    Ok(())
}
