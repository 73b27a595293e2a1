//! `shipping` binary: reads the environment, opens the database, binds, consumes and serves
//! until SIGTERM, then stops consuming, lets in-flight messages finish and exits 0.

use anyhow::Context;
use clap::Parser;
use flotilla_kit::server::serve_until_signal;
use flotilla_kit::telemetry::init_tracing;
use shipping::config::Args;
use shipping::{db, BrokerSettings, Db};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Args::parse().resolve()?;
    let _telemetry = init_tracing(config.service.log_format, "shipping")?;
    let db = Db::open(&config.database_url)
        .with_context(|| format!("opening {}", db::redact(&config.database_url)))?;
    let service = shipping::build(
        db.clone(),
        BrokerSettings {
            url: config.amqp_url.clone(),
            prefetch: config.prefetch,
            retry: config.retry,
            reconnect_max: config.reconnect_max,
        },
        config.service.admin_token.clone(),
    )?;
    if config.dev {
        tracing::warn!("developer mode: defaults for a local broker and listen address");
    }
    // The database may be down at start: serve (not ready), migrate once it answers, and only
    // then consume, so no event is taken that could not be stored.
    let consuming = tokio::spawn({
        let db = db.clone();
        let consumer = service.consumer.clone();
        async move {
            db.migrate_until_ready().await;
            consumer.run().await;
        }
    });
    let listener = tokio::net::TcpListener::bind(config.service.listen_addr)
        .await
        .with_context(|| format!("binding LISTEN_ADDR {}", config.service.listen_addr))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        pod_ip = %config.service.pod_ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
        database = %db::redact(&config.database_url),
        broker = %db::redact(&config.amqp_url),
        prefetch = config.prefetch,
        admin = config.service.admin_token.is_some(),
        "shipping listening"
    );
    let stopped = serve_until_signal(
        listener,
        service.filter(),
        service.kit.health.clone(),
        &config.service,
    )
    .await;
    // Draining started with the signal: the consumer is cancelling and finishing its
    // in-flight messages; give it the same bound as in-flight requests.
    let abort = consuming.abort_handle();
    if tokio::time::timeout(config.service.drain_timeout, consuming)
        .await
        .is_err()
    {
        tracing::warn!("in-flight messages did not finish in time; the broker redelivers them");
        abort.abort();
    }
    db.close().await;
    tracing::info!(?stopped, "shipping stopped");
    Ok(())
}
