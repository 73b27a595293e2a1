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

use std::time::Instant;

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

    /// Records the traffic verdict in `metadata`, if there is one the operator's leading
    /// prober signed for this pod; the HTTP and gRPC health paths share one check (and its
    /// replay guard).
    fn take_verdict(&self, metadata: &tonic::metadata::MetadataMap) {
        let Some(verdict) = metadata.get(TRAFFIC_HEADER).and_then(|v| v.to_str().ok()) else {
            return;
        };
        let signature = metadata
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

    /// Asks open connections to close while this pod should get no traffic: not ready, or
    /// ejected.
    fn close_if_out(&self, ready: bool) {
        if !ready || self.traffic.ejected() {
            self.traffic.close_connections();
        }
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
        self.close_if_out(ready);
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
        self.take_verdict(request.metadata());
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
        self.take_verdict(request.metadata());
        let service = request.into_inner().service;
        // Sends the status now and each change the moment the instance knows it (the kit's
        // readiness evaluator, shared with `/readyz` watches); an unknown name is
        // SERVICE_UNKNOWN, and the stream stays open, as the protocol asks.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        let known = service.is_empty() || service == ORDERS_SERVICE;
        let mut readiness = self.health.watch_readiness(&self.faults);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let report = readiness.borrow_and_update().clone();
                let status = match (known, report) {
                    (false, _) => Some(ServingStatus::ServiceUnknown),
                    (true, Some(r)) if r.failing.is_empty() => Some(ServingStatus::Serving),
                    (true, Some(_)) => Some(ServingStatus::NotServing),
                    (true, None) => None,
                };
                if let Some(status) = status.filter(|s| last != Some(*s)) {
                    last = Some(status);
                    this.close_if_out(status != ServingStatus::NotServing);
                    let msg = HealthCheckResponse {
                        status: status.into(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    r = readiness.changed() => if r.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
