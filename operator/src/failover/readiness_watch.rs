//! The readiness watch: one open request per pod on which the pod reports its readiness
//! changes as they happen, and whose connection tells at once when the pod dies.
//!
//! - HTTP pods: `GET <readiness path>` with `Flotilla-Watch: heartbeat=0`; a pod that supports
//!   it answers with the same header and streams one line per change (`ready`,
//!   `not_ready <checks>`), ending the response now and then, when the watch asks again on the
//!   same connection. A pod without support answers the ordinary probe: the watch says so and
//!   ends, and the pod is probed every period only.
//! - gRPC pods: `grpc.health.v1.Health/Watch`, the standard streaming check (`UNIMPLEMENTED`:
//!   no support).
//!
//! What the watch reports to the engine:
//! - a pod's own `not_ready` (or `NOT_SERVING`) at once, *decisive*: the pod knows, so it is not
//!   confirmed by more probes (a failure threshold guards against a noisy network, not against
//!   the pod's own word);
//! - `ready` again after it;
//! - death on the wire: the connection closed or reset by the pod's side in the middle of the
//!   watch is a failed probe at once, confirmed by one immediate reconnect (refused, reset or
//!   no answer within the probe timeout: a second failure, which reaches the default
//!   threshold of two); a reconnect that works resumes the watch.
//!
//! The periodic probes go on beside the watch: they carry the traffic verdicts and the scrapes,
//! and they find what a watch cannot, a pod that hangs (it closes nothing and says nothing).
//! The watch ends after a failed reconnect; the engine opens it again after the pod's next
//! successful probe.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::pod_health::Observation;
use super::probe::{HttpPaths, PodConn, ProbeClient};

/// Longest report line read; longer lines end the watch as malformed.
const MAX_LINE: usize = 1024;

/// What one watch tells the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The pod accepted the watch (sent once per watch).
    Opened,
    /// The pod does not support watching; it is probed every period only.
    Unsupported,
    /// A readiness observation: the pod's own word, or a broken watch connection
    /// (`ConnectError`: lost, then again if the immediate reconnect failed).
    Report {
        /// What was seen.
        observation: Observation,
        /// When.
        at: Instant,
        /// The pod's own word that it is not ready: counts as reaching the failure threshold.
        decisive: bool,
        /// What it was, for the watch metrics: `ready`, `not_ready`, `connection_lost`,
        /// `reconnect_failed`.
        report: &'static str,
    },
    /// The watch stopped (its reconnect failed); the engine may open it again.
    Ended,
}

/// Where one watch reports: the engine's channel, tagged with the pod's id and the watch's
/// generation (so reports of a watch the engine already replaced are told apart).
#[derive(Debug, Clone)]
pub struct Reporter {
    /// The engine's channel.
    pub tx: mpsc::UnboundedSender<(u64, u64, WatchEvent)>,
    /// The pod's id in the engine.
    pub id: u64,
    /// The watch's generation.
    pub generation: u64,
}

impl Reporter {
    fn send(&self, event: WatchEvent) {
        let _ = self.tx.send((self.id, self.generation, event));
    }

    /// Says the pod accepted the watch (the engine counts it once per watch).
    fn opened(&self) {
        self.send(WatchEvent::Opened);
    }

    fn report(&self, observation: Observation, decisive: bool, report: &'static str) {
        self.send(WatchEvent::Report {
            observation,
            at: Instant::now(),
            decisive,
            report,
        });
    }
}

/// What a watch of one pod needs.
#[derive(Debug, Clone)]
pub struct WatchTarget {
    /// The pod's address.
    pub addr: SocketAddr,
    /// The HTTP request targets, for an HTTP pod.
    pub http: Option<Arc<HttpPaths>>,
    /// `Some(service name)` for a gRPC pod.
    pub grpc_service: Option<String>,
    /// Bound of connecting and of each response head.
    pub timeout: Duration,
}

/// Runs one pod's watch until it ends (see the module documentation); the engine aborts it
/// when the pod goes away or changes address.
pub async fn run(client: ProbeClient, target: WatchTarget, reporter: Reporter) {
    match (&target.grpc_service, &target.http) {
        (Some(service), _) => grpc(&client, &target, service, &reporter).await,
        (None, Some(http)) => self::http(&target, http, &reporter).await,
        (None, None) => {}
    }
    reporter.send(WatchEvent::Ended);
}

/// How one watch response ended.
enum Ended {
    /// Complete; the pod will answer the next request.
    Complete,
    /// The pod does not watch.
    Unsupported,
    /// Cut: closed, reset, malformed or not opened in time.
    Broken,
}

/// Readiness line state, to report changes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    Ready,
    NotReady,
}

async fn http(target: &WatchTarget, paths: &HttpPaths, reporter: &Reporter) {
    let request = paths.watch();
    let mut conn: Option<PodConn> = None;
    let mut last: Option<Said> = None;
    let mut reconnected = false;
    loop {
        match http_once(target, &request, &mut conn, &mut last, reporter).await {
            Ended::Complete => reconnected = false,
            Ended::Unsupported => {
                reporter.send(WatchEvent::Unsupported);
                return;
            }
            Ended::Broken if reconnected => {
                // The immediate reconnect failed too: the second failure.
                reporter.report(Observation::ConnectError, false, "reconnect_failed");
                return;
            }
            Ended::Broken => {
                // Death on the wire, to be confirmed by reconnecting at once.
                if last != Some(Said::NotReady) {
                    reporter.report(Observation::ConnectError, false, "connection_lost");
                }
                last = None;
                reconnected = true;
            }
        }
    }
}

/// One watch request on `conn` (opened if needed), read to its end.
async fn http_once(
    target: &WatchTarget,
    request: &[u8],
    conn: &mut Option<PodConn>,
    last: &mut Option<Said>,
    reporter: &Reporter,
) -> Ended {
    let open = async {
        let mut c = match conn.take().filter(PodConn::is_reusable) {
            Some(c) => c,
            None => PodConn::connect(target.addr).await.map_err(|_| ())?,
        };
        let head = c.send(request).await.map_err(|_| ())?;
        Ok::<_, ()>((c, head))
    };
    let Ok(Ok((mut c, head))) = tokio::time::timeout(target.timeout, open).await else {
        return Ended::Broken;
    };
    if !head.watch {
        return Ended::Unsupported;
    }
    reporter.opened();
    let mut line = Vec::new();
    let read = c
        .body(&head, |data| {
            for &b in data {
                if b != b'\n' {
                    if line.len() >= MAX_LINE {
                        return Err(());
                    }
                    line.push(b);
                    continue;
                }
                let said = if line.starts_with(b"ready") {
                    Said::Ready
                } else if line.starts_with(b"not_ready") {
                    Said::NotReady
                } else {
                    line.clear();
                    continue;
                };
                line.clear();
                if *last != Some(said) {
                    *last = Some(said);
                    match said {
                        Said::Ready => reporter.report(Observation::Success, false, "ready"),
                        Said::NotReady => {
                            reporter.report(Observation::BadStatus(503), true, "not_ready")
                        }
                    }
                }
            }
            Ok(())
        })
        .await;
    if read.is_err() {
        return Ended::Broken;
    }
    if c.completed() {
        *conn = Some(c);
    }
    Ended::Complete
}

async fn grpc(client: &ProbeClient, target: &WatchTarget, service: &str, reporter: &Reporter) {
    let mut last: Option<Said> = None;
    let mut reconnected = false;
    loop {
        match grpc_once(client, target, service, &mut last, reporter).await {
            Ended::Complete => reconnected = false,
            Ended::Unsupported => {
                reporter.send(WatchEvent::Unsupported);
                return;
            }
            Ended::Broken if reconnected => {
                reporter.report(Observation::ConnectError, false, "reconnect_failed");
                return;
            }
            Ended::Broken => {
                if last != Some(Said::NotReady) {
                    reporter.report(Observation::ConnectError, false, "connection_lost");
                }
                // The next attempt starts from a new connection.
                client.forget_channel(target.addr);
                last = None;
                reconnected = true;
            }
        }
    }
}

async fn grpc_once(
    client: &ProbeClient,
    target: &WatchTarget,
    service: &str,
    last: &mut Option<Said>,
    reporter: &Reporter,
) -> Ended {
    let Ok(channel) = client.channel(target.addr) else {
        return Ended::Broken;
    };
    let mut health = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let mut stream = match tokio::time::timeout(target.timeout, health.watch(request)).await {
        Ok(Ok(resp)) => {
            reporter.opened();
            resp.into_inner()
        }
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            return Ended::Unsupported
        }
        _ => return Ended::Broken,
    };
    loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                let said = match msg.status() {
                    ServingStatus::Serving => Said::Ready,
                    _ => Said::NotReady,
                };
                if *last != Some(said) {
                    *last = Some(said);
                    match msg.status() {
                        ServingStatus::Serving => {
                            reporter.report(Observation::Success, false, "ready")
                        }
                        ServingStatus::NotServing => {
                            reporter.report(
                                Observation::GrpcNotServing("NOT_SERVING"),
                                true,
                                "not_ready",
                            );
                        }
                        ServingStatus::ServiceUnknown => {
                            reporter.report(
                                Observation::GrpcNotServing("SERVICE_UNKNOWN"),
                                true,
                                "not_ready",
                            );
                        }
                        ServingStatus::Unknown => {
                            reporter.report(
                                Observation::GrpcNotServing("UNKNOWN"),
                                true,
                                "not_ready",
                            );
                        }
                    }
                }
            }
            // The server ended a stream the protocol keeps open: it is going away.
            Ok(None) | Err(_) => return Ended::Broken,
        }
    }
}
