//! Running probes: the HTTP GET and TCP checks, and the per-probe loop that waits for the
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
