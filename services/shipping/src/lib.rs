//! The shipping sample service: consumes `OrderPlaced` events from RabbitMQ (the fleet's
//! contract in `flotilla_kit::amqp`) and schedules one shipment per order, stored in SQLite
//! (embedded default) or PostgreSQL through sqlx; a small read API shows what was handled.
//!
//! The pipeline of one message: [`classify`] (pure: event or poison) → [`handler`] (fault
//! gate, [`db`] in one transaction with the event id, then ack, retry or dead-letter as
//! [`handler::decide`] says, backing off as [`retry`] says) on the queues of [`topology`]; the
//! [`consumer`] task owns the connection, reconnects, and stops and resumes consuming on the
//! traffic verdict. [`build`] wires these with the kit's health, metrics and faults into a
//! [`Service`]; the binary only reads the environment, binds and waits for a signal.

pub mod classify;
pub mod config;
pub mod consumer;
pub mod db;
pub mod handler;
pub mod metrics;
pub mod retry;
pub mod routes;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use flotilla_kit::metrics::MetricsError;
use flotilla_kit::{Health, Kit};
use warp::filters::BoxedFilter;
use warp::reply::Response;

pub use crate::consumer::Consumer;
pub use crate::db::{Db, DbError};
use crate::handler::Handler;
use crate::metrics::EventMetrics;
use crate::retry::RetryPolicy;
use crate::topology::BrokerState;

/// A ready-to-run shipping service: the HTTP side and the consumer.
#[derive(Debug, Clone)]
pub struct Service {
    /// Shared kit state (health, faults, metrics).
    pub kit: Kit,
    /// Shipment store.
    pub db: Db,
    /// The consumer task's settings and state; [`Consumer::run`] starts it.
    pub consumer: Consumer,
}

impl Service {
    /// The complete warp filter: the read API plus health, metrics and admin routes.
    pub fn filter(&self) -> BoxedFilter<(Response,)> {
        self.kit
            .filter(routes::routes(self.db.clone(), &self.kit.faults))
    }
}

/// How the consumer reaches its broker.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// `AMQP_URL`.
    pub url: String,
    /// `SHIPPING_PREFETCH`.
    pub prefetch: u16,
    /// Retries of failed events.
    pub retry: RetryPolicy,
    /// `AMQP_RECONNECT_MAX_MS`.
    pub reconnect_max: Duration,
}

/// Builds the service. Readiness checks the database (`database`) and the broker connection
/// (`broker`, naming why it is down).
pub fn build(
    db: Db,
    broker: BrokerSettings,
    admin_token: Option<String>,
) -> Result<Service, MetricsError> {
    let state = BrokerState::default();
    let probe = db.clone();
    let broker_probe = state.clone();
    let health = Health::builder()
        .check("database", move || {
            let db = probe.clone();
            async move { db.ping().await }
        })
        .check("broker", move || {
            let state = broker_probe.clone();
            async move { state.check() }
        })
        .build();
    let kit = Kit::new(health, admin_token)?;
    let registry = kit
        .metrics
        .as_ref()
        .map(|m| m.registry().clone())
        .unwrap_or_default();
    let metrics = EventMetrics::register(&registry)?;
    let handler = Arc::new(Handler {
        db: db.clone(),
        faults: kit.faults.clone(),
        metrics: metrics.clone(),
        retry: broker.retry,
    });
    let consumer = Consumer {
        url: broker.url,
        prefetch: broker.prefetch,
        reconnect_max: broker.reconnect_max,
        health: kit.health.clone(),
        broker: state,
        handler,
        metrics,
    };
    Ok(Service { kit, db, consumer })
}
