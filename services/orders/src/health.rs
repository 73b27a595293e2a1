//! The standard `grpc.health.v1.Health` service, answered from the kit's readiness checks
//! (database, injected faults, draining) so the gRPC and HTTP views of readiness agree.
//!
//! `Check` also reads the traffic verdict Flotilla's prober sends as `flotilla-traffic`
//! metadata, and asks open connections to close while the pod is ejected or not ready
//! (see [`crate::traffic`]). The verdict never changes the answer: an ejected pod that is
//! healthy still says `SERVING`, so Flotilla can tell when it may come back.
//!
//! Known service names: `""` (the whole server) and [`ORDERS_SERVICE`]; any other is
//! `NOT_FOUND`, as the health protocol specifies.

use std::time::{Duration, Instant};

use flotilla_kit::server::PeerAddr;
use flotilla_kit::verdict;
use flotilla_kit::{Faults, Health};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::grpc_metrics::{GrpcMetrics, HEALTH_SERVICE, ORDERS_SERVICE};
use crate::traffic::{Traffic, TRAFFIC_HEADER};

/// How often a `Watch` stream re-evaluates readiness.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// The health service of one orders instance.
#[derive(Debug, Clone)]
pub struct GrpcHealth {
    health: Health,
    faults: Faults,
    traffic: Traffic,
    metrics: Option<GrpcMetrics>,
}

impl GrpcHealth {
    /// Answers from `health` and `faults`; reports verdicts to `traffic`.
    pub fn new(
        health: Health,
        faults: Faults,
        traffic: Traffic,
        metrics: Option<GrpcMetrics>,
    ) -> Self {
        Self {
            health,
            faults,
            traffic,
            metrics,
        }
    }

    /// The tonic server for this service.
    pub fn server(self) -> HealthServer<Self> {
        HealthServer::new(self)
    }

    /// The serving status of `service`, closing connections when this pod should get none.
    async fn status(
        &self,
        service: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<ServingStatus, Status> {
        if !(service.is_empty() || service == ORDERS_SERVICE) {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        let report = self.health.readiness_for(&self.faults, peer).await;
        let ready = report.failing.is_empty();
        self.traffic.record_ready(ready);
        if !ready || self.traffic.ejected() {
            self.traffic.close_connections();
        }
        Ok(if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        })
    }
}

#[tonic::async_trait]
impl HealthApi for GrpcHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let start = Instant::now();
        if let Some(verdict) = request
            .metadata()
            .get(TRAFFIC_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            // Only a verdict the operator's leading prober signed for this pod counts; the
            // HTTP and gRPC health paths share one check (and its replay guard).
            let signature = request
                .metadata()
                .get(verdict::SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok());
            let verdict = verdict.trim().to_ascii_lowercase();
            let outcome = self.health.traffic().verdict_check().check(
                &verdict,
                signature,
                verdict::unix_ms_now(),
            );
            if outcome == verdict::Outcome::Accepted {
                self.traffic.record_verdict(&verdict);
            } else {
                tracing::debug!(outcome = outcome.label(), "ignoring a traffic verdict");
            }
        }
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
        let result = self
            .status(&request.get_ref().service, peer)
            .await
            .map(|status| {
                Response::new(HealthCheckResponse {
                    status: status.into(),
                })
            });
        if let Some(m) = &self.metrics {
            let code = result
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok);
            m.observe(HEALTH_SERVICE, "Check", code, start.elapsed());
        }
        result
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        // Sends the status now and whenever it changes; an unknown name is SERVICE_UNKNOWN
        // (the stream stays open, as the protocol asks).
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let status = this
                    .status(&service, None)
                    .await
                    .unwrap_or(ServingStatus::ServiceUnknown);
                if last != Some(status) {
                    last = Some(status);
                    let msg = HealthCheckResponse {
                        status: status.into(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(WATCH_PERIOD) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
