//! HTTP client for the users service: `POST /users/verify` with a per-attempt timeout,
//! bounded retries with exponential backoff, and the circuit breaker in front.
//!
//! Verify changes no data, but it is not free to repeat: each attempt costs users an Argon2
//! hash and counts against the account's rate limit. So retries cover only failures where
//! users cannot have done the work — connection errors and 5xx answers — never a timeout (the
//! attempt may still be running there), and a 4xx is an answer, never retried. Retries also
//! draw on a budget: each call earns a fifth of a retry (up to 10 saved), each retry spends
//! one, so an overloaded users service sees at most about 20 % extra load from retries, not
//! triple. The breaker counts whole calls (after retries), so one login never opens it on its
//! own. The caller's `x-request-id` and trace context go along so one login is traceable in both
//! services.
//! Every check carries the service credential users requires on this route; a 401 that is not
//! `bad_credentials` means users refused that credential, which is a configuration fault (502),
//! never a wrong password.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use flotilla_kit::jwt::Role;

use crate::breaker::{Breaker, BreakerConfig, Refused};

/// Retries one call earns for later, as a share of a retry.
pub const RETRY_BUDGET_RATIO: f64 = 0.2;

/// Most retries saved up in the budget (and its starting balance).
pub const RETRY_BUDGET_MAX: f64 = 10.0;

/// Retries allowed as a share of calls: a token bucket filled by calls, drained by retries.
#[derive(Debug)]
struct RetryBudget {
    balance: f64,
}

impl RetryBudget {
    fn new() -> Self {
        Self {
            balance: RETRY_BUDGET_MAX,
        }
    }

    fn on_call(&mut self) {
        self.balance = (self.balance + RETRY_BUDGET_RATIO).min(RETRY_BUDGET_MAX);
    }

    fn try_retry(&mut self) -> bool {
        if self.balance >= 1.0 {
            self.balance -= 1.0;
            true
        } else {
            false
        }
    }
}

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
    id: String,
    #[serde(default)]
    role: Role,
}

/// A successful credential check: the account and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user's stable id (a UUID), the token's subject.
    pub id: String,
    /// The account's role, to put in the token.
    pub role: Role,
}

/// Client for the users service; cheap to clone, shares its breaker.
#[derive(Debug, Clone)]
pub struct UsersClient {
    http: reqwest::Client,
    base: Url,
    // `Authorization` value for the credential check.
    service_auth: Arc<str>,
    config: ClientConfig,
    breaker: Arc<Mutex<Breaker>>,
    budget: Arc<Mutex<RetryBudget>>,
    state_gauge: Option<prometheus::IntGauge>,
    retries: Option<prometheus::IntCounter>,
}

enum Attempt {
    Answer(Option<Verified>),
    Retryable(String),
    // Timed out: users may still be doing the work, so it is not repeated.
    TimedOut(String),
    Fatal(u16),
}

impl UsersClient {
    /// A client for the users service at `base` (e.g. `http://users:8080`), presenting
    /// `service_token` on the credential check.
    pub fn new(
        base: Url,
        service_token: &str,
        config: ClientConfig,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()?;
        Ok(Self {
            http,
            base,
            service_auth: format!("Bearer {service_token}").into(),
            breaker: Arc::new(Mutex::new(Breaker::new(config.breaker))),
            budget: Arc::new(Mutex::new(RetryBudget::new())),
            config,
            state_gauge: None,
            retries: None,
        })
    }

    /// Counts retries in `counter`.
    pub fn with_retry_counter(mut self, counter: prometheus::IntCounter) -> Self {
        self.retries = Some(counter);
        self
    }

    fn budget_allows_retry(&self) -> bool {
        let mut budget = match self.budget.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        budget.try_retry()
    }

    fn budget_on_call(&self) {
        let mut budget = match self.budget.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        budget.on_call();
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

    /// Checks credentials: `Ok(Some(verified))` when valid, `Ok(None)` when users says no.
    /// `request_id` is forwarded as `x-request-id`.
    pub async fn verify(
        &self,
        email: &str,
        password: &str,
        request_id: Option<&str>,
    ) -> Result<Option<Verified>, UpstreamError> {
        let ticket = self.with_breaker(|b| b.try_acquire(Instant::now()))?;
        let url = self
            .base
            .join("users/verify")
            .map_err(|e| UpstreamError::Unavailable {
                attempts: 0,
                last: e.to_string(),
            })?;
        self.budget_on_call();
        let body = VerifyRequest { email, password };
        let max_attempts = self.config.attempts.max(1);
        let mut attempts = 0;
        let last = loop {
            if attempts > 0 {
                let delay = self.config.backoff * 2u32.saturating_pow(attempts - 1);
                tokio::time::sleep(delay).await;
            }
            attempts += 1;
            match self.attempt(&url, &body, request_id).await {
                Attempt::Answer(id) => {
                    self.with_breaker(|b| b.on_success(ticket));
                    return Ok(id);
                }
                Attempt::Fatal(status) => {
                    // users answered, so it is up: do not count this against the breaker.
                    self.with_breaker(|b| b.on_success(ticket));
                    return Err(UpstreamError::Unexpected(status));
                }
                Attempt::TimedOut(why) => break why,
                Attempt::Retryable(why) => {
                    tracing::debug!(attempt = attempts, error = %why, "users call failed");
                    if attempts >= max_attempts || !self.budget_allows_retry() {
                        break why;
                    }
                    if let Some(c) = &self.retries {
                        c.inc();
                    }
                }
            }
        };
        let state = self.with_breaker(|b| {
            b.on_failure(ticket, Instant::now());
            b.state_name()
        });
        tracing::warn!(breaker = state, error = %last, "users unavailable");
        Err(UpstreamError::Unavailable { attempts, last })
    }

    async fn attempt(
        &self,
        url: &Url,
        body: &VerifyRequest<'_>,
        request_id: Option<&str>,
    ) -> Attempt {
        let mut req = self
            .http
            .post(url.clone())
            .header(reqwest::header::AUTHORIZATION, &*self.service_auth)
            .json(body);
        if let Some(id) = request_id {
            req = req.header(flotilla_kit::telemetry::REQUEST_ID_HEADER, id);
        }
        // The login's span goes along as `traceparent` (with trace export on), so users'
        // request span joins the same trace.
        let mut trace = http::HeaderMap::new();
        flotilla_kit::telemetry::otlp::inject_current(&mut trace);
        req = req.headers(trace);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Attempt::TimedOut(e.to_string()),
            Err(e) => return Attempt::Retryable(e.to_string()),
        };
        match resp.status() {
            StatusCode::OK => match resp.json::<VerifyResponse>().await {
                Ok(v) => Attempt::Answer(Some(Verified {
                    id: v.id,
                    role: v.role,
                })),
                Err(e) if e.is_timeout() => Attempt::TimedOut(e.to_string()),
                Err(e) => Attempt::Retryable(format!("bad verify response: {e}")),
            },
            StatusCode::UNAUTHORIZED => match resp.json::<flotilla_kit::reply::ErrorBody>().await {
                Ok(e) if e.error == "bad_credentials" => Attempt::Answer(None),
                _ => {
                    tracing::error!(
                        "users refused auth's service credential (USERS_SERVICE_TOKEN)"
                    );
                    Attempt::Fatal(StatusCode::UNAUTHORIZED.as_u16())
                }
            },
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
