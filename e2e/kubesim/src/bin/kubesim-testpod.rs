//! `kubesim-testpod`: a tiny HTTP server that plays a container image in kubesim's tests.
//!
//! Listens on `LISTEN_ADDR` and serves:
//! - `GET /` → `pod=<name>` (from `KUBESIM_POD_NAME`, else `HOSTNAME`)
//! - `GET /healthz` → 200, or 500 after `POST /sick`
//! - `GET /readyz` → 200, or 503 after `POST /fail` (until `POST /recover`)
//! - `GET /env/<NAME>` → the value of an environment variable, 404 if unset
//! - `POST /exit` → exits with status 3
//!
//! SIGTERM makes it exit 0 at once, as a well-behaved service would after draining, unless
//! `TESTPOD_IGNORE_SIGTERM=1` is set (to exercise the kubelet's grace period and SIGKILL).
//! It also exits when its parent (the kubelet) goes away without stopping it, e.g. when a test
//! process is killed outright, so no test pod outlives its test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Flags {
    unready: AtomicBool,
    sick: AtomicBool,
}

fn pod_name() -> String {
    std::env::var("KUBESIM_POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

fn respond(status: u16, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn handle(mut stream: TcpStream, flags: Arc<Flags>) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let reply = match (method, path) {
        ("GET", "/") => respond(200, &format!("pod={}\n", pod_name())),
        ("GET", "/healthz") if flags.sick.load(Ordering::SeqCst) => respond(500, "sick\n"),
        ("GET", "/healthz") => respond(200, "ok\n"),
        ("GET", "/readyz") if flags.unready.load(Ordering::SeqCst) => respond(503, "not ready\n"),
        ("GET", "/readyz") => respond(200, "ready\n"),
        ("POST", "/fail") => {
            flags.unready.store(true, Ordering::SeqCst);
            respond(200, "readiness now fails\n")
        }
        ("POST", "/recover") => {
            flags.unready.store(false, Ordering::SeqCst);
            flags.sick.store(false, Ordering::SeqCst);
            respond(200, "recovered\n")
        }
        ("POST", "/sick") => {
            flags.sick.store(true, Ordering::SeqCst);
            respond(200, "liveness now fails\n")
        }
        ("POST", "/exit") => {
            stream.write_all(respond(200, "bye\n").as_bytes()).await?;
            std::process::exit(3);
        }
        ("GET", p) if p.starts_with("/env/") => match std::env::var(&p[5..]) {
            Ok(v) => respond(200, &v),
            Err(_) => respond(404, "unset\n"),
        },
        _ => respond(404, "not found\n"),
    };
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    println!("kubesim-testpod {} listening on {addr}", pod_name());
    let flags = Arc::new(Flags::default());
    let parent = std::os::unix::process::parent_id();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if std::os::unix::process::parent_id() != parent {
                println!("parent process gone, exiting");
                std::process::exit(0);
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                if std::env::var("TESTPOD_IGNORE_SIGTERM").is_ok_and(|v| v == "1") {
                    println!("SIGTERM received, ignoring it");
                    continue;
                }
                println!("SIGTERM received, exiting");
                return Ok(());
            }
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let flags = flags.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, flags).await {
                        eprintln!("connection error: {e}");
                    }
                });
            }
        }
    }
}
