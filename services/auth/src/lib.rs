//! The auth sample service: `POST /login` checks credentials with the users service and
//! returns a JWT signed with auth's Ed25519 key; `GET /verify` checks a bearer token and returns
//! its claims; `GET /.well-known/jwks.json` publishes the public keys users and orders verify
//! with.
//!
//! Calls to users go through [`client::UsersClient`] (timeout, bounded retries, circuit
//! breaker); readiness probes users directly. [`build`] wires it all into a [`Service`];
//! the binary only reads the environment, binds and waits for a signal.

pub mod breaker;
pub mod client;
pub mod config;
pub mod routes;

/// Tokens are shared with the services that verify them (users, orders).
pub use flotilla_kit::jwt;

use std::time::Duration;

use flotilla_kit::ratelimit::CredentialLimits;
use flotilla_kit::{Health, Kit};
use warp::filters::BoxedFilter;
use warp::reply::Response;

pub use crate::client::{ClientConfig, UsersClient};
pub use crate::jwt::{Claims, Signer, Verifier};
pub use crate::routes::State;

/// Default login attempts a minute per account.
pub const DEFAULT_LIMIT_PER_ACCOUNT: u32 = 10;

/// Default login attempts a minute per client address.
pub const DEFAULT_LIMIT_PER_ADDRESS: u32 = 60;

/// Timeout of the readiness probe against users, below the kit's per-check limit.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A ready-to-serve auth service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Shared kit state (health, faults, metrics).
    pub kit: Kit,
    /// Handler state (users client, token signer).
    pub state: State,
}

/// Building the service failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The HTTP client could not be built.
    #[error("cannot build the users client: {0}")]
    Client(#[from] reqwest::Error),
    /// Metrics registration failed.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] flotilla_kit::metrics::MetricsError),
}

impl Service {
    /// The complete warp filter: API routes plus health, metrics and admin routes.
    pub fn filter(&self) -> BoxedFilter<(Response,)> {
        self.kit
            .filter(routes::routes(self.state.clone(), &self.kit.faults))
    }
}

/// Builds the service. Readiness requires users' `/healthz` to answer; `service_token` is the
/// credential presented on users' credential check.
pub fn build(
    users_url: reqwest::Url,
    service_token: &str,
    client: ClientConfig,
    tokens: Signer,
    admin_token: Option<String>,
) -> Result<Service, BuildError> {
    let gauge = prometheus::IntGauge::new(
        "auth_users_circuit_state",
        "Circuit breaker in front of the users service: 0 closed, 1 half-open, 2 open.",
    )?;
    let retries = prometheus::IntCounter::new(
        "auth_users_retries_total",
        "Calls to the users service repeated after a connection error or a 5xx answer.",
    )?;
    let users = UsersClient::new(users_url, service_token, client)?
        .with_state_gauge(gauge.clone())
        .with_retry_counter(retries.clone());
    let probe = users.clone();
    let health = Health::builder()
        .check("users", move || {
            let users = probe.clone();
            async move { users.probe(PROBE_TIMEOUT).await }
        })
        .build();
    let kit = Kit::new(health, admin_token)?;
    if let Some(metrics) = &kit.metrics {
        metrics.registry().register(Box::new(gauge))?;
        metrics.registry().register(Box::new(retries))?;
    }
    Ok(Service {
        kit,
        state: State {
            users,
            tokens,
            limits: CredentialLimits::new(DEFAULT_LIMIT_PER_ACCOUNT, DEFAULT_LIMIT_PER_ADDRESS),
        },
    })
}
