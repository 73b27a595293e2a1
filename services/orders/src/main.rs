//! `orders` binary: reads the environment, opens the database, binds, serves until SIGTERM.
//! With `AMQP_URL` set it also runs the event relay, stopped once the server has drained (so
//! events of calls finished during the drain still go out).

use anyhow::Context;
use flotilla_kit::server::{shutdown_signal, DrainOptions};
use flotilla_kit::telemetry::init_tracing;
use orders::config::Config;
use orders::{db, Db};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let _telemetry = init_tracing(config.service.log_format, "orders")?;
    let db = Db::connect(&config.database_url)
        .await
        .with_context(|| format!("opening {}", db::redact(&config.database_url)))?;
    // Public keys only: orders verifies tokens for its audience and cannot mint any.
    let tokens = flotilla_kit::jwt::Verifier::for_audience(
        flotilla_kit::jwt::AUDIENCE_ORDERS,
        config.public_keys.clone(),
    );
    let _jwks = config
        .jwks_url
        .clone()
        .map(|url| flotilla_kit::jwks::spawn_refresh(url, tokens.clone()))
        .transpose()?;
    let traffic = if config.honour_traffic_verdict {
        orders::Traffic::new()
    } else {
        orders::Traffic::ignoring()
    };
    let (kit, app, relay) = orders::build_with(
        db.clone(),
        tokens,
        config.service.admin_token.clone(),
        traffic,
        config.amqp_url.clone(),
    )?;
    if relay.is_none() {
        tracing::info!("events off: AMQP_URL is unset, so orders write no events and publish none");
    }
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = relay.map(|relay| {
        tokio::spawn(relay.run(async move {
            let _ = relay_stopped.await;
        }))
    });
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
    let _ = stop_relay.send(());
    if let Some(relay) = relay {
        if let Err(e) = relay.await {
            tracing::error!(error = %e, "the event relay panicked");
        }
    }
    db.close().await;
    tracing::info!(?stopped, "orders stopped");
    Ok(())
}
