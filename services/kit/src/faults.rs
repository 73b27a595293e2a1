//! Fault injection for tests and demos: make a service unready, fail a share of its API
//! requests with 500, or slow them down, at runtime through `/admin/faults`.
//!
//! The admin routes exist only when `ADMIN_TOKEN` is set, and then require
//! `Authorization: Bearer <token>`. `unhealthy` fails `/readyz` only (traffic moves away, the
//! kubelet does not restart the pod); `flakyReadiness` fails every other `/readyz` answer on
//! each client connection (a noisy instance); `errorRate` and `latencyMs` apply to the service's own
//! API routes, never to health, metrics or admin routes, so a faulty service can still be
//! observed and repaired.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::credentials::bearer_matches;
pub use crate::reply::InjectedFault;
use crate::reply::{self, tag};

/// Connections remembered by `flakyReadiness`; the table is reset when it grows past this.
const MAX_FLAKY_PEERS: usize = 4096;

/// Upper bound on injected latency, so a typo cannot park requests for hours.
pub const MAX_LATENCY_MS: u64 = 60_000;

/// Route template of the admin endpoint (also its metrics label).
pub const ADMIN_ROUTE: &str = "/admin/faults";

/// The faults currently injected. All fields default to "no fault".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultConfig {
    /// Report not-ready on `/readyz` (liveness is unaffected).
    #[serde(default)]
    pub unhealthy: bool,
    /// Fail every other `/readyz` answer on each client connection, starting with a pass: a
    /// noisy instance. Keyed by connection so that each prober sees the alternation itself.
    #[serde(default)]
    pub flaky_readiness: bool,
    /// Share of API requests, 0.0..=1.0, answered with HTTP 500 instead of being handled.
    #[serde(default)]
    pub error_rate: f64,
    /// Delay added before each API request is handled, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
}

impl FaultConfig {
    /// Checks ranges; the message is returned to the caller as a 400.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "errorRate must be between 0.0 and 1.0, got {}",
                self.error_rate
            ));
        }
        if self.latency_ms > MAX_LATENCY_MS {
            return Err(format!(
                "latencyMs must be at most {MAX_LATENCY_MS}, got {}",
                self.latency_ms
            ));
        }
        Ok(())
    }

    fn affects_requests(&self) -> bool {
        self.error_rate > 0.0 || self.latency_ms > 0
    }
}

/// Shared, runtime-changeable fault state of one service instance.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    config: Arc<RwLock<FaultConfig>>,
    // Fast path: API requests skip the lock entirely while no request fault is set.
    active: Arc<AtomicBool>,
    // flakyReadiness: whether the next answer on each connection fails.
    flaky: Arc<Mutex<HashMap<SocketAddr, bool>>>,
    // Bumped on every change, so a readiness watch re-evaluates at once.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Faults {
    /// No faults injected.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current configuration.
    pub fn get(&self) -> FaultConfig {
        match self.config.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the configuration after validating it.
    pub fn set(&self, cfg: FaultConfig) -> Result<(), String> {
        cfg.validate()?;
        let active = cfg.affects_requests();
        match self.config.write() {
            Ok(mut g) => *g = cfg,
            Err(poisoned) => *poisoned.into_inner() = cfg,
        }
        self.active.store(active, Ordering::Release);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// A receiver that sees every change of the configuration.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Clears every fault.
    pub fn clear(&self) {
        // The default configuration always validates.
        let _ = self.set(FaultConfig::default());
    }

    /// Whether `/readyz` must report not-ready.
    pub fn unhealthy(&self) -> bool {
        self.get().unhealthy
    }

    /// With `flakyReadiness`, whether this `/readyz` answer to `peer` fails: every other one
    /// per connection, the first passing. Always false without the fault or a peer address.
    pub fn flaky_readiness_fails(&self, peer: Option<SocketAddr>) -> bool {
        let (true, Some(peer)) = (self.get().flaky_readiness, peer) else {
            return false;
        };
        let mut table = match self.flaky.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if table.len() >= MAX_FLAKY_PEERS && !table.contains_key(&peer) {
            table.clear();
        }
        let fail_next = table.entry(peer).or_insert(false);
        let fails = *fail_next;
        *fail_next = !fails;
        fails
    }

    /// A filter to put on each API route *after* its path and method matched: it applies the
    /// configured latency, then fails the request with a 500 at the configured rate.
    pub fn gate(
        &self,
        route: &'static str,
    ) -> impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static {
        let faults = self.clone();
        warp::any()
            .and_then(move || {
                let faults = faults.clone();
                async move {
                    if !faults.active.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    let cfg = faults.get();
                    if cfg.latency_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(cfg.latency_ms)).await;
                    }
                    if cfg.error_rate > 0.0 && rand::random::<f64>() < cfg.error_rate {
                        return Err(warp::reject::custom(InjectedFault { route }));
                    }
                    Ok(())
                }
            })
            .untuple_one()
    }

    /// `GET`, `POST` and `DELETE /admin/faults`, guarded by `Authorization: Bearer <token>`.
    pub fn admin_routes(
        &self,
        token: String,
    ) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
        let token = Arc::new(token);
        let faults = self.clone();
        // The token is checked before the body is read: an unauthenticated client cannot
        // make the service buffer anything.
        let guard = warp::header::optional::<String>("authorization")
            .and_then(move |auth: Option<String>| {
                let token = token.clone();
                async move {
                    if bearer_matches(auth.as_deref(), &token) {
                        Ok(())
                    } else {
                        Err(warp::reject::custom(reply::Unauthorized {
                            route: ADMIN_ROUTE,
                            code: "unauthorized",
                            message: "admin routes need Authorization: Bearer <ADMIN_TOKEN>",
                        }))
                    }
                }
            })
            .untuple_one();
        warp::path!("admin" / "faults")
            .and(guard)
            .and(warp::method())
            .and(reply::body_limited(ADMIN_ROUTE, 16 * 1024))
            .map(move |method, body: bytes::Bytes| tag(ADMIN_ROUTE, admin(&faults, &method, &body)))
    }
}

fn admin(faults: &Faults, method: &warp::http::Method, body: &[u8]) -> Response {
    match *method {
        warp::http::Method::GET => reply::json(StatusCode::OK, &faults.get()),
        warp::http::Method::DELETE => {
            faults.clear();
            tracing::info!("faults cleared");
            reply::json(StatusCode::OK, &faults.get())
        }
        warp::http::Method::POST => {
            let cfg: FaultConfig = match serde_json::from_slice(body) {
                Ok(c) => c,
                Err(e) => {
                    return reply::error(StatusCode::BAD_REQUEST, "invalid_input", e.to_string())
                }
            };
            if let Err(msg) = faults.set(cfg.clone()) {
                return reply::error(StatusCode::BAD_REQUEST, "invalid_input", msg);
            }
            tracing::info!(?cfg, "faults injected");
            reply::json(StatusCode::OK, &cfg)
        }
        _ => reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET, POST or DELETE",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_bounds() {
        // Out-of-range rates and latencies are refused instead of clamped.
        let ok = FaultConfig {
            unhealthy: true,
            flaky_readiness: true,
            error_rate: 1.0,
            latency_ms: 10,
        };
        assert!(ok.validate().is_ok());
        let bad_rate = FaultConfig {
            error_rate: 1.5,
            ..FaultConfig::default()
        };
        assert!(bad_rate.validate().is_err());
        let nan = FaultConfig {
            error_rate: f64::NAN,
            ..FaultConfig::default()
        };
        assert!(nan.validate().is_err());
        let slow = FaultConfig {
            latency_ms: MAX_LATENCY_MS + 1,
            ..FaultConfig::default()
        };
        assert!(slow.validate().is_err());
    }

    #[test]
    fn json_shape_is_camel_case_and_strict() {
        // The wire format is camelCase and unknown fields are rejected.
        let cfg: FaultConfig =
            serde_json::from_str(r#"{"errorRate":0.5,"latencyMs":20}"#).expect("parse");
        assert_eq!(cfg.error_rate, 0.5);
        assert_eq!(cfg.latency_ms, 20);
        assert!(!cfg.unhealthy);
        assert!(serde_json::from_str::<FaultConfig>(r#"{"error_rate":0.5}"#).is_err());
    }

    #[test]
    fn set_and_clear() {
        // Clearing returns to the no-fault state and disables the request fast path.
        let f = Faults::new();
        f.set(FaultConfig {
            error_rate: 0.2,
            ..FaultConfig::default()
        })
        .expect("valid");
        assert!(f.active.load(Ordering::Acquire));
        f.clear();
        assert_eq!(f.get(), FaultConfig::default());
        assert!(!f.active.load(Ordering::Acquire));
    }
}
