//! The users sample service: user accounts over REST with passwords hashed by Argon2id,
//! stored in SQLite (embedded default) or PostgreSQL through sqlx.
//!
//! [`build`] wires storage, readiness and routes into a [`Service`]; the binary only reads
//! the environment, binds and waits for a signal.

pub mod access;
pub mod config;
pub mod db;
pub mod model;
pub mod password;
pub mod routes;
pub mod signup;

use std::sync::Arc;

use flotilla_kit::metrics::MetricsError;
use flotilla_kit::ratelimit::CredentialLimits;
use flotilla_kit::{Health, Kit};
use warp::filters::BoxedFilter;
use warp::reply::Response;

pub use crate::access::Access;
pub use crate::db::{Db, DbError};
pub use crate::password::Passwords;
pub use crate::routes::State;
pub use crate::signup::SignupLimits;

/// Default credential checks a minute per account.
pub const DEFAULT_LIMIT_PER_ACCOUNT: u32 = 10;

/// Default credential checks a minute per client address: the clients are auth's pods, each
/// checking for many users, so this only stops a runaway or hostile caller.
pub const DEFAULT_LIMIT_PER_ADDRESS: u32 = 600;

/// A ready-to-serve users service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Shared kit state (health, faults, metrics).
    pub kit: Kit,
    /// Handler state (database, hasher).
    pub state: State,
}

impl Service {
    /// The complete warp filter: API routes plus health, metrics and admin routes.
    pub fn filter(&self) -> BoxedFilter<(Response,)> {
        self.kit
            .filter(routes::routes(self.state.clone(), &self.kit.faults))
    }
}

/// Builds the service on a database. Readiness checks that the schema is there. The routes
/// accept no credential until `state.access` is set.
pub fn build(
    db: Db,
    passwords: Passwords,
    admin_token: Option<String>,
    metrics: bool,
) -> Result<Service, MetricsError> {
    let probe = db.clone();
    let health = Health::builder()
        .check("database", move || {
            let db = probe.clone();
            async move { db.ping().await }
        })
        .build();
    let mut kit = Kit::new(health, admin_token)?;
    if !metrics {
        kit.metrics = None;
    }
    Ok(Service {
        kit,
        state: State {
            db,
            passwords: Arc::new(passwords),
            limits: CredentialLimits::new(DEFAULT_LIMIT_PER_ACCOUNT, DEFAULT_LIMIT_PER_ADDRESS),
            signup_limits: SignupLimits::default(),
            // Closed until the caller configures credentials (see `access`).
            access: Arc::new(Access::default()),
        },
    })
}
