//! HTTP client for the users service: `POST /users/verify` with a per-attempt timeout,
//! bounded retries with exponential backoff, and the circuit breaker in front.
//!
//! Verify only reads (it checks a password and changes nothing), so retrying it is safe.
//! Retries cover transport errors and 5xx; a 4xx is an answer and is never retried. The
//! breaker counts whole calls (after retries), so one login never opens it on its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::breaker::{Breaker, BreakerConfig, Refused};

/// Client tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Timeout of one attempt, connect included.
    pub timeout: Duration,
    /// Attempts per call, first one included (at least 1).
    pub attempts: u32,
    /// Delay before the first retry; doubled for each further retry.
    pub backoff: Duration,
    /// Circuit breaker settings.
    pub breaker: BreakerConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            attempts: 3,
            backoff: Duration::from_millis(100),
            breaker: BreakerConfig {
                failure_threshold: 5,
                open_for: Duration::from_secs(10),
            },
        }
    }
}

/// A call to users that produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The breaker is open; no request was sent.
    #[error(transparent)]
    CircuitOpen(#[from] Refused),
    /// Every attempt failed to connect, timed out or got a 5xx.
    #[error("users service unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// users answered with a status this client does not expect (e.g. 400).
    #[error("unexpected answer from users service: HTTP {0}")]
    Unexpected(u16),
}

#[derive(Serialize)]
struct VerifyRequest<'a> {
    email: &'a str,
    password: &'a str,
}

#[derive(Deserialize)]
struct VerifyResponse {
    id: i64,
}

/// Client for the users service; cheap to clone, shares its breaker.
#[derive(Debug, Clone)]
pub struct UsersClient {
    http: reqwest::Client,
    base: Url,
    config: ClientConfig,
    breaker: Arc<Mutex<Breaker>>,
    state_gauge: Option<prometheus::IntGauge>,
}

enum Attempt {
    Answer(Option<i64>),
    Retryable(String),
    Fatal(u16),
}

impl UsersClient {
    /// A client for the users service at `base` (e.g. `http://users:8080`).
    pub fn new(base: Url, config: ClientConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()?;
        Ok(Self {
            http,
            base,
            breaker: Arc::new(Mutex::new(Breaker::new(config.breaker))),
            config,
            state_gauge: None,
        })
    }

    /// Publishes the breaker state in `gauge`: 0 closed, 1 half-open, 2 open.
    pub fn with_state_gauge(mut self, gauge: prometheus::IntGauge) -> Self {
        gauge.set(0);
        self.state_gauge = Some(gauge);
        self
    }

    /// The users base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn with_breaker<T>(&self, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut guard = match self.breaker.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let out = f(&mut guard);
        if let Some(g) = &self.state_gauge {
            g.set(match guard.state_name() {
                "closed" => 0,
                "half_open" => 1,
                _ => 2,
            });
        }
        out
    }

    /// The breaker's state name: `closed`, `open` or `half_open`.
    pub fn breaker_state(&self) -> &'static str {
        self.with_breaker(|b| b.state_name())
    }

    /// Checks credentials: `Ok(Some(id))` when valid, `Ok(None)` when users says no.
    pub async fn verify(&self, email: &str, password: &str) -> Result<Option<i64>, UpstreamError> {
        self.with_breaker(|b| b.try_acquire(Instant::now()))?;
        let url = self
            .base
            .join("users/verify")
            .map_err(|e| UpstreamError::Unavailable {
                attempts: 0,
                last: e.to_string(),
            })?;
        let body = VerifyRequest { email, password };
        let attempts = self.config.attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                let delay = self.config.backoff * 2u32.saturating_pow(attempt - 1);
                tokio::time::sleep(delay).await;
            }
            match self.attempt(&url, &body).await {
                Attempt::Answer(id) => {
                    self.with_breaker(Breaker::on_success);
                    return Ok(id);
                }
                Attempt::Fatal(status) => {
                    // users answered, so it is up: do not count this against the breaker.
                    self.with_breaker(Breaker::on_success);
                    return Err(UpstreamError::Unexpected(status));
                }
                Attempt::Retryable(why) => {
                    tracing::debug!(attempt = attempt + 1, error = %why, "users call failed");
                    last = why;
                }
            }
        }
        let state = self.with_breaker(|b| {
            b.on_failure(Instant::now());
            b.state_name()
        });
        tracing::warn!(breaker = state, error = %last, "users unavailable");
        Err(UpstreamError::Unavailable { attempts, last })
    }

    async fn attempt(&self, url: &Url, body: &VerifyRequest<'_>) -> Attempt {
        let resp = match self.http.post(url.clone()).json(body).send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retryable(e.to_string()),
        };
        match resp.status() {
            StatusCode::OK => match resp.json::<VerifyResponse>().await {
                Ok(v) => Attempt::Answer(Some(v.id)),
                Err(e) => Attempt::Retryable(format!("bad verify response: {e}")),
            },
            StatusCode::UNAUTHORIZED => Attempt::Answer(None),
            s if s.is_server_error() => Attempt::Retryable(format!("HTTP {}", s.as_u16())),
            s => Attempt::Fatal(s.as_u16()),
        }
    }

    /// Readiness probe: users' `/healthz` answers 200 within `timeout`. Bypasses the breaker
    /// so readiness reports the upstream itself, not our recent history with it.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let url = self.base.join("healthz").map_err(|e| e.to_string())?;
        match self.http.get(url).timeout(timeout).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!(
                "users /healthz answered HTTP {}",
                r.status().as_u16()
            )),
            Err(e) => Err(format!("users unreachable: {e}")),
        }
    }
}
