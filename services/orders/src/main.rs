//! `orders` binary: reads the environment, opens the database, binds, serves until SIGTERM.

use std::time::Duration;

use anyhow::Context;
use flotilla_kit::server::{shutdown_signal, DrainOptions};
use flotilla_kit::telemetry::init_tracing;
use orders::config::Config;
use orders::{db, Db};

/// Token lifetime does not matter here: orders only verifies tokens, it never issues them.
const VERIFY_ONLY_TTL: Duration = Duration::from_secs(0);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    init_tracing(config.service.log_format)?;
    let db = Db::connect(&config.database_url)
        .await
        .with_context(|| format!("opening {}", db::redact(&config.database_url)))?;
    let tokens = auth::Tokens::new(&config.jwt_secret, VERIFY_ONLY_TTL);
    let traffic = if config.honour_traffic_verdict {
        orders::Traffic::new()
    } else {
        orders::Traffic::ignoring()
    };
    let (kit, app) = orders::build_with(
        db.clone(),
        tokens,
        config.service.admin_token.clone(),
        traffic,
    )?;
    let listener = tokio::net::TcpListener::bind(config.service.listen_addr)
        .await
        .with_context(|| format!("binding LISTEN_ADDR {}", config.service.listen_addr))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        database = %db::redact(&config.database_url),
        admin = config.service.admin_token.is_some(),
        "orders listening (gRPC and HTTP)"
    );
    let _heartbeat = kit.health.spawn_heartbeat();
    let stopped = orders::server::serve(
        listener,
        app,
        DrainOptions::from(&config.service),
        shutdown_signal(),
    )
    .await;
    db.close().await;
    tracing::info!(?stopped, "orders stopped");
    Ok(())
}
