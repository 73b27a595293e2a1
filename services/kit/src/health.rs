//! Liveness (`/healthz`) and readiness (`/readyz`).
//!
//! Liveness answers "is this process alive and not wedged": it fails only when the heartbeat
//! task has not ticked for [`WEDGED_AFTER`], i.e. the runtime stopped scheduling work. It never
//! looks at dependencies, so a database outage does not make the kubelet restart every pod.
//! Readiness answers "should traffic come here": it runs the service's dependency checks
//! (database, upstream services), and also fails while draining for shutdown or when a fault
//! marks the instance unhealthy. Its 503 body names each failing check.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::faults::Faults;
use crate::readiness_watch::{self, Evaluator, RequestCounts, WatchRequest, WATCH_HEADER};
use crate::reply::{self, tag};
use crate::traffic::{Traffic, TRAFFIC_HEADER};
use crate::verdict::{VerdictCheck, SIGNATURE_HEADER};

/// Liveness fails when the heartbeat is older than this.
pub const WEDGED_AFTER: Duration = Duration::from_secs(10);

/// A readiness check must answer within this time, or it counts as failing. Kept well under
/// the default probe timeout so `/readyz` itself answers in time.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The future a readiness check returns: `Err` carries a short reason.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// Health state of one service instance; cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    checks: Vec<(&'static str, CheckFn)>,
    draining: AtomicBool,
    traffic: Traffic,
    started: Instant,
    // Milliseconds since `started` at the last heartbeat; 0 = heartbeat not running.
    heartbeat_ms: AtomicU64,
    // Readiness for watchers (see `readiness_watch`).
    evaluator: Evaluator<ReadinessReport>,
    // API request counts for watchers.
    requests: Arc<RequestCounts>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field(
                "checks",
                &self.inner.checks.iter().map(|c| c.0).collect::<Vec<_>>(),
            )
            .field("draining", &self.is_draining())
            .finish()
    }
}

/// One failing readiness check, as reported in the 503 body.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Failing {
    /// Check name, e.g. `database`, `users`, `shutdown`, `faults`.
    pub check: String,
    /// Why it fails.
    pub reason: String,
}

/// Body of `/readyz`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReadinessReport {
    /// `ready` or `not_ready`.
    pub status: String,
    /// Failing checks; empty when ready.
    pub failing: Vec<Failing>,
}

impl readiness_watch::Report for ReadinessReport {
    fn line(&self) -> bytes::Bytes {
        readiness_watch::line(self.failing.iter().map(|f| f.check.as_str()))
    }

    fn is_last(&self) -> bool {
        self.failing.iter().any(|f| f.check == SHUTDOWN_CHECK)
    }
}

/// The check that fails while the instance drains for shutdown.
const SHUTDOWN_CHECK: &str = "shutdown";

/// Builder for [`Health`].
#[derive(Default)]
pub struct HealthBuilder {
    checks: Vec<(&'static str, CheckFn)>,
    verdicts: Option<VerdictCheck>,
}

impl std::fmt::Debug for HealthBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthBuilder").finish_non_exhaustive()
    }
}

impl HealthBuilder {
    /// Adds a named readiness check.
    pub fn check<F, Fut>(mut self, name: &'static str, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(f()))));
        self
    }

    /// Trusts the traffic verdicts `check` accepts, instead of the pod's environment
    /// (`POD_NAME`, `FLOTILLA_VERDICT_KEYS`).
    pub fn verdicts(mut self, check: VerdictCheck) -> Self {
        self.verdicts = Some(check);
        self
    }

    /// Finishes the builder. Without [`HealthBuilder::verdicts`], the verdict check comes from
    /// the environment Flotilla gives its pods; keys that do not parse are logged as an error
    /// and every verdict is then ignored (the pod keeps serving, as one without the contract).
    pub fn build(self) -> Health {
        let check = self.verdicts.unwrap_or_else(|| {
            VerdictCheck::from_env().unwrap_or_else(|e| {
                tracing::error!(error = %e, "ignoring traffic verdicts");
                VerdictCheck::disabled()
            })
        });
        Health {
            inner: Arc::new(Inner {
                checks: self.checks,
                draining: AtomicBool::new(false),
                traffic: Traffic::with_check(check),
                started: Instant::now(),
                heartbeat_ms: AtomicU64::new(0),
                evaluator: Evaluator::default(),
                requests: Arc::default(),
            }),
        }
    }
}

impl Health {
    /// Starts building a health state with readiness checks.
    pub fn builder() -> HealthBuilder {
        HealthBuilder::default()
    }

    /// Marks the instance as shutting down: readiness fails from now on.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.traffic.start_draining();
        self.inner.evaluator.poke.notify_one();
    }

    /// Subscribes to this instance's readiness, starting the evaluator if nobody watched
    /// (see [`crate::readiness_watch`]). The value is `None` until the first evaluation.
    pub fn watch_readiness(
        &self,
        faults: &Faults,
    ) -> tokio::sync::watch::Receiver<Option<Arc<ReadinessReport>>> {
        let rx = self.inner.evaluator.state.subscribe();
        if self.inner.evaluator.claim() {
            tokio::spawn(self.clone().evaluate(faults.clone()));
        }
        rx
    }

    /// The evaluator task: the checks at once when faults change or draining starts, else
    /// every [`readiness_watch::RECHECK`], while anyone watches.
    async fn evaluate(self, faults: Faults) {
        let ev = &self.inner.evaluator;
        let mut changes = faults.subscribe();
        loop {
            let report = self.readiness(&faults).await;
            self.traffic().record_ready(report.failing.is_empty());
            ev.state.send_if_modified(|cur| {
                let changed = cur.as_deref() != Some(&report);
                if changed {
                    *cur = Some(Arc::new(report));
                }
                changed
            });
            tokio::select! {
                () = tokio::time::sleep(readiness_watch::RECHECK) => {}
                () = ev.poke.notified() => {}
                r = changes.changed() => { let _ = r; }
            }
            if !ev.keep_running() {
                return;
            }
        }
    }

    /// The instance's API request counts, which its readiness watch lines carry; the kit's
    /// filter records every API answer (see [`crate::Kit::filter`]).
    pub fn request_counts(&self) -> &RequestCounts {
        &self.inner.requests
    }

    /// The traffic verdict state the server closes persistent connections by.
    pub fn traffic(&self) -> &Traffic {
        &self.inner.traffic
    }

    /// Whether [`Self::start_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Spawns the heartbeat task liveness relies on; it ticks every second.
    pub fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                health.beat();
            }
        })
    }

    fn beat(&self) {
        let ms = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.heartbeat_ms.store(ms.max(1), Ordering::Release);
    }

    /// Whether the process looks wedged (heartbeat running but stale).
    pub fn wedged(&self) -> bool {
        let last = self.inner.heartbeat_ms.load(Ordering::Acquire);
        if last == 0 {
            return false;
        }
        let now = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(last) > u64::try_from(WEDGED_AFTER.as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs every readiness check (each bounded by [`CHECK_TIMEOUT`]) and reports.
    pub async fn readiness(&self, faults: &Faults) -> ReadinessReport {
        self.readiness_for(faults, None).await
    }

    /// [`Self::readiness`] for a request from `peer`, which the `flakyReadiness` fault needs.
    pub async fn readiness_for(
        &self,
        faults: &Faults,
        peer: Option<std::net::SocketAddr>,
    ) -> ReadinessReport {
        let mut failing = Vec::new();
        if self.is_draining() {
            failing.push(Failing {
                check: SHUTDOWN_CHECK.into(),
                reason: "draining for shutdown".into(),
            });
        }
        if faults.unhealthy() {
            failing.push(Failing {
                check: "faults".into(),
                reason: "marked unhealthy by /admin/faults".into(),
            });
        } else if faults.flaky_readiness_fails(peer) {
            failing.push(Failing {
                check: "faults".into(),
                reason: "flaky readiness injected by /admin/faults".into(),
            });
        }
        for (name, check) in &self.inner.checks {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            if let Err(reason) = outcome {
                failing.push(Failing {
                    check: (*name).to_owned(),
                    reason,
                });
            }
        }
        let status = if failing.is_empty() {
            "ready"
        } else {
            "not_ready"
        };
        ReadinessReport {
            status: status.to_owned(),
            failing,
        }
    }

    /// One ordinary `/readyz` answer: 200 or 503 with the report.
    async fn probe_response(
        &self,
        faults: &Faults,
        peer: Option<std::net::SocketAddr>,
    ) -> Response {
        let report = self.readiness_for(faults, peer).await;
        self.traffic().record_ready(report.failing.is_empty());
        let status = if report.failing.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        reply::json(status, &report)
    }

    /// A watch answer (see [`crate::readiness_watch`]), its status from the first report.
    async fn watch_response(&self, faults: &Faults, req: WatchRequest) -> Response {
        let mut rx = self.watch_readiness(faults);
        let first = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        let Some(first) = first else {
            return self.probe_response(faults, None).await;
        };
        let status = if first.failing.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = readiness_watch::body(rx, req, self.inner.requests.clone());
        let reply = warp::reply::with_header(
            warp::reply::with_header(
                warp::reply::with_status(warp::reply::stream(body), status),
                WATCH_HEADER,
                req.header_value(),
            ),
            "content-type",
            "text/plain; charset=utf-8",
        );
        warp::reply::Reply::into_response(reply)
    }

    /// `GET /healthz` and `GET /readyz`.
    pub fn routes(
        &self,
        faults: Faults,
    ) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
        let live = self.clone();
        let healthz = warp::path!("healthz").and(warp::get()).map(move || {
            let resp = if live.wedged() {
                reply::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "wedged",
                    "heartbeat stalled",
                )
            } else {
                reply::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
            };
            tag("/healthz", resp)
        });
        let ready = self.clone();
        let readyz = warp::path!("readyz")
            .and(warp::get())
            .and(warp::ext::optional::<crate::reply::PeerAddr>())
            .and(warp::header::optional::<String>(TRAFFIC_HEADER))
            .and(warp::header::optional::<String>(SIGNATURE_HEADER))
            .and(warp::header::optional::<String>(WATCH_HEADER))
            .and(warp::header::optional::<String>(
                readiness_watch::ERRORS_HEADER,
            ))
            .then(
                move |peer: Option<crate::reply::PeerAddr>,
                      verdict: Option<String>,
                      signature: Option<String>,
                      watch: Option<String>,
                      errors: Option<String>| {
                    let peer = peer.map(|p| p.0);
                    let (ready, faults) = (ready.clone(), faults.clone());
                    async move {
                        let record_verdict = || {
                            if let Some(v) = &verdict {
                                ready.traffic().record_verdict(v, signature.as_deref());
                            }
                        };
                        // `flakyReadiness` is a per-answer fault: its pods answer every
                        // request as an ordinary probe, so each prober sees the alternation.
                        let watch = watch
                            .as_deref()
                            .and_then(WatchRequest::parse)
                            .map(|w| w.with_errors(errors.as_deref()))
                            .filter(|_| !faults.get().flaky_readiness);
                        let resp = match watch {
                            Some(req) => {
                                record_verdict();
                                ready.watch_response(&faults, req).await
                            }
                            None => {
                                // Own readiness first, so `serving` on a failing instance
                                // keeps closing.
                                let resp = ready.probe_response(&faults, peer).await;
                                record_verdict();
                                resp
                            }
                        };
                        tag("/readyz", resp)
                    }
                },
            );
        healthz.or(readyz).unify()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_names_failing_checks() {
        // A failing dependency check appears by name in the report; passing ones do not.
        let health = Health::builder()
            .check("database", || async { Ok(()) })
            .check("users", || async { Err("connection refused".to_owned()) })
            .build();
        let report = health.readiness(&Faults::new()).await;
        assert_eq!(report.status, "not_ready");
        assert_eq!(
            report.failing,
            vec![Failing {
                check: "users".into(),
                reason: "connection refused".into()
            }]
        );
    }

    #[tokio::test]
    async fn draining_and_faults_fail_readiness() {
        // Shutdown and an injected "unhealthy" both fail readiness even with no checks.
        let health = Health::builder().build();
        let faults = Faults::new();
        assert_eq!(health.readiness(&faults).await.status, "ready");
        faults
            .set(crate::FaultConfig {
                unhealthy: true,
                ..Default::default()
            })
            .expect("valid");
        let names: Vec<_> = health
            .readiness(&faults)
            .await
            .failing
            .into_iter()
            .map(|f| f.check)
            .collect();
        assert_eq!(names, vec!["faults"]);
        faults.clear();
        health.start_draining();
        assert_eq!(health.readiness(&faults).await.failing[0].check, "shutdown");
    }

    #[tokio::test]
    async fn http_status_codes() {
        // /readyz maps the report to 200/503; /healthz stays 200 when only readiness fails.
        let health = Health::builder()
            .check("db", || async { Err("down".to_owned()) })
            .build();
        let routes = health.routes(Faults::new());
        let r = warp::test::request().path("/readyz").reply(&routes).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: ReadinessReport = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(body.failing[0].check, "db");
        let r = warp::test::request().path("/healthz").reply(&routes).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}
