//! `users` binary: reads the environment, opens the database, binds, serves until SIGTERM.

use anyhow::Context;
use flotilla_kit::server::{serve, shutdown_signal, DrainOptions};
use flotilla_kit::telemetry::init_tracing;
use users::config::Config;
use users::{db, Db, Passwords};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    init_tracing(config.service.log_format)?;
    let db = Db::connect(&config.database_url)
        .await
        .with_context(|| format!("opening {}", db::redact(&config.database_url)))?;
    let service = users::build(
        db,
        Passwords::new()?,
        config.service.admin_token.clone(),
        true,
    )?;
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
    let _heartbeat = service.kit.health.spawn_heartbeat();
    let opts = DrainOptions {
        shutdown_delay: config.service.shutdown_delay,
        drain_timeout: config.service.drain_timeout,
    };
    let stopped = serve(
        listener,
        service.filter(),
        service.kit.health.clone(),
        opts,
        shutdown_signal(),
    )
    .await;
    service.state.db.close().await;
    tracing::info!(?stopped, "users stopped");
    Ok(())
}
