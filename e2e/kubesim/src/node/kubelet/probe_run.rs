//! Running probes: the HTTP GET, TCP and gRPC health checks, and the per-probe loop that waits for the
//! container to start, honours initialDelay/period/timeout and reports verdict flips.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::probe::{ProbeCheck, ProbeKind, ProbeState};

/// A verdict flip: which probe, its new verdict and the last failure message.
pub type Flip = (ProbeKind, bool, String);

async fn http_status(
    addr: (std::net::Ipv4Addr, u16),
    path: &str,
    host: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "malformed response {:?}",
                line.lines().next().unwrap_or_default()
            )
        })
}

/// `grpc.health.v1.Health/Check` as the kubelet's gRPC probe sends it: plaintext HTTP/2, a
/// fresh connection per probe, success only on `SERVING`.
async fn grpc_health(addr: (std::net::Ipv4Addr, u16), service: &str) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let target = format!("{}:{}", addr.0, addr.1);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("failed to connect service {target:?}: {e}"))?;
    let request = tonic_health::pb::HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|status| {
            format!(
                "health rpc probe failed: code {:?}: {}",
                status.code(),
                status.message()
            )
        })?;
    match response.get_ref().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!(
            "service unhealthy (responded with {:?})",
            other.as_str_name()
        )),
    }
}

/// Runs one check; `Err` carries the kubelet-style failure message.
pub async fn check(c: &ProbeCheck, timeout: Duration) -> Result<(), String> {
    let fut = async {
        match c {
            ProbeCheck::Http {
                addr,
                path,
                host_header,
                headers,
            } => {
                let code = http_status(*addr, path, host_header, headers)
                    .await
                    .map_err(|e| format!("Get \"http://{}:{}{path}\": {e}", addr.0, addr.1))?;
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe failed with statuscode: {code}"))
                }
            }
            ProbeCheck::Tcp { addr } => TcpStream::connect(*addr)
                .await
                .map(|_| ())
                .map_err(|e| format!("dial tcp {}:{}: {e}", addr.0, addr.1)),
            ProbeCheck::Grpc { addr, service } => grpc_health(*addr, service).await,
            ProbeCheck::Unsupported(_) => Ok(()),
            ProbeCheck::Invalid(message) => Err(message.clone()),
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(format!("probe timed out after {}s", timeout.as_secs())))
}

/// Runs a probe until cancelled or until a liveness/startup failure (which ends the container).
pub async fn run(
    mut state: ProbeState,
    check_spec: ProbeCheck,
    mut started: watch::Receiver<bool>,
    flips: mpsc::Sender<Flip>,
    token: CancellationToken,
) {
    if state.kind != ProbeKind::Startup {
        tokio::select! {
            () = token.cancelled() => return,
            r = started.wait_for(|s| *s) => if r.is_err() { return },
        }
    }
    tokio::select! {
        () = token.cancelled() => return,
        () = tokio::time::sleep(state.params.initial_delay) => {},
    }
    loop {
        let result = check(&check_spec, state.params.timeout).await;
        let message = result.clone().err().unwrap_or_default();
        if let Some(verdict) = state.observe(result.is_ok()) {
            if flips.send((state.kind, verdict, message)).await.is_err() {
                return;
            }
            if !verdict && state.kind != ProbeKind::Readiness {
                return;
            }
            if verdict && state.kind == ProbeKind::Startup {
                return;
            }
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(state.params.period) => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tonic_health::ServingStatus;

    #[tokio::test]
    async fn grpc_probe_follows_the_serving_status() {
        // A gRPC probe passes only while the named service reports SERVING, fails with the
        // reported status otherwise, and fails when nothing listens.
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("orders", ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let probe = |service: &str| ProbeCheck::Grpc {
            addr: (Ipv4Addr::LOCALHOST, port),
            service: service.into(),
        };
        let timeout = Duration::from_secs(10);
        assert_eq!(check(&probe("orders"), timeout).await, Ok(()));
        reporter
            .set_service_status("orders", ServingStatus::NotServing)
            .await;
        let err = check(&probe("orders"), timeout)
            .await
            .expect_err("not serving");
        assert!(err.contains("NOT_SERVING"), "{err}");
        let err = check(&probe("nope"), timeout).await.expect_err("unknown");
        assert!(err.contains("NotFound"), "{err}");
        server.abort();
        let _ = server.await;
        let err = check(&probe("orders"), timeout).await.expect_err("closed");
        assert!(err.contains("failed to connect"), "{err}");
    }
}
