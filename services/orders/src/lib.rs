//! The orders sample service: a small gRPC API (tonic) where each caller, identified by a JWT
//! from the auth service, creates, reads and lists their own orders, stored in SQLite
//! (embedded default) or PostgreSQL through sqlx.
//!
//! Beside the API it serves the standard `grpc.health.v1` health service (answered from the
//! kit's readiness checks), server reflection, and on the same port the kit's HTTP routes:
//! `/healthz`, `/readyz`, `/metrics` (HTTP and per-method gRPC counters) and `/admin/faults`.
//! It honours Flotilla's traffic verdict (see [`traffic`]). With `AMQP_URL` set it announces
//! every order as an `OrderPlaced` event on RabbitMQ, through a transactional outbox and a
//! relay task (see [`events`]); readiness does not depend on the broker. [`build`] wires it all
//! into an [`server::App`]; the binary only reads the environment, binds, runs the relay and
//! waits for a signal.

pub mod api;
pub mod config;
pub mod db;
pub mod events;
pub mod grpc_metrics;
pub mod health;
pub mod server;
pub mod traffic;

/// Generated protobuf types, the tonic server and client, and the encoded descriptor set.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("flotilla.orders.v1");

    /// Descriptor set of `orders.proto`, served by the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/orders_descriptor.bin"));
}

use flotilla_kit::{Health, Kit};
use warp::Filter as _;

pub use crate::api::OrdersApi;
pub use crate::db::{Db, DbError};
pub use crate::events::{Outbox, Relay};
pub use crate::grpc_metrics::GrpcMetrics;
pub use crate::health::GrpcHealth;
pub use crate::server::App;
pub use crate::traffic::Traffic;

/// Building the service failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Registering metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The reflection service could not read the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Builds the whole service on an open database, events off. `tokens` checks callers' JWTs
/// with auth's public keys, for the `orders` audience.
pub fn build(
    db: Db,
    tokens: flotilla_kit::jwt::Verifier,
    admin_token: Option<String>,
) -> Result<(Kit, App), BuildError> {
    let (kit, app, _) = build_with(db, tokens, admin_token, Traffic::new(), None)?;
    Ok((kit, app))
}

/// Like [`build`], with the given traffic state (e.g. [`Traffic::ignoring`]) and, with an
/// `amqp_url`, events on: orders write their events to the outbox, and the returned
/// [`Relay`] (for the caller to run) publishes them. Its metrics join the service's.
pub fn build_with(
    db: Db,
    tokens: flotilla_kit::jwt::Verifier,
    admin_token: Option<String>,
    traffic: Traffic,
    amqp_url: Option<String>,
) -> Result<(Kit, App, Option<Relay>), BuildError> {
    let probe = db.clone();
    let health = Health::builder()
        .check("database", move || {
            let db = probe.clone();
            async move { db.ping().await }
        })
        .build();
    let kit = Kit::new(health, admin_token)?;
    let grpc_metrics = kit
        .metrics
        .as_ref()
        .map(|m| GrpcMetrics::register(m.registry()))
        .transpose()?;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let relay = amqp_url
        .map(|url| {
            // Without the kit's registry (benchmarks only) the series go to one nobody reads.
            let registry = kit
                .metrics
                .as_ref()
                .map_or_else(prometheus::Registry::new, |m| m.registry().clone());
            events::EventMetrics::register(&registry).map(|m| Relay::new(db.clone(), url, m))
        })
        .transpose()?;
    let mut api = OrdersApi::new(db, tokens, kit.faults.clone(), grpc_metrics.clone())
        .counting_in(kit.health.clone());
    if let Some(relay) = &relay {
        api = api.with_events(relay.outbox());
    }
    let grpc = tonic::service::Routes::new(api.server())
        .add_service(
            GrpcHealth::new(
                kit.health.clone(),
                kit.faults.clone(),
                traffic.clone(),
                grpc_metrics,
            )
            .server(),
        )
        .add_service(reflection)
        .prepare();
    // The kit wants API routes; all of this service's API is gRPC, so none match over HTTP.
    let no_api = warp::any()
        .and_then(|| async { Err::<warp::reply::Response, _>(warp::reject::not_found()) });
    let app = App {
        grpc,
        http: kit.filter(no_api),
        health: kit.health.clone(),
        traffic,
    };
    Ok((kit, app, relay))
}
