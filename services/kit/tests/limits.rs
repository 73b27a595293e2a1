//! The server's resource limits over raw TCP: chunked bodies refused while they are read, the
//! admin token checked before any body is read, slow headers cut off, connections capped.

use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_kit::server::{DrainOptions, Running};
use flotilla_kit::{Health, Kit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warp::Filter;

const TOKEN: &str = "9f2c1e7a4b8d0c3e6f1a5b9d";

async fn start(opts: DrainOptions) -> Result<Running> {
    let kit = Kit::new(Health::builder().build(), Some(TOKEN.to_owned()))?;
    let api = warp::path!("never").map(|| flotilla_kit::tag("/never", "x"));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(Running::start(
        listener,
        kit.filter(api),
        kit.health.clone(),
        opts,
    )?)
}

/// Reads until the status line is complete; returns its code. Fails after `within`.
async fn status(stream: &mut TcpStream, within: Duration) -> Result<u16> {
    let mut buf = Vec::new();
    tokio::time::timeout(within, async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed without a response");
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })
    .await
    .context("no response in time")??;
    let line = String::from_utf8_lossy(&buf);
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no status code")?
        .parse()?)
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_refused_while_reading() -> Result<()> {
    // A chunked body that passes 16 KiB gets 413 before the client has finished sending: the
    // server never waits for (or buffers) the rest.
    let srv = start(DrainOptions::default()).await?;
    let mut s = TcpStream::connect(srv.addr).await?;
    s.write_all(
        format!(
            "POST /admin/faults HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    for _ in 0..17 {
        s.write_all(&chunk(&[b' '; 1024])).await?;
    }
    // No terminating chunk: the body is still "in progress".
    assert_eq!(status(&mut s, Duration::from_secs(10)).await?, 413);
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn admin_token_is_checked_before_the_body_is_read() -> Result<()> {
    // Without the token the admin route answers 401 while the body is still unsent.
    let srv = start(DrainOptions::default()).await?;
    let mut s = TcpStream::connect(srv.addr).await?;
    s.write_all(b"POST /admin/faults HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    s.write_all(&chunk(b"{")).await?;
    assert_eq!(status(&mut s, Duration::from_secs(10)).await?, 401);
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn slow_headers_are_cut_off() -> Result<()> {
    // A client that never finishes its request headers loses the connection after the
    // header-read timeout.
    let srv = start(DrainOptions {
        header_read_timeout: Duration::from_millis(300),
        ..DrainOptions::default()
    })
    .await?;
    let mut s = TcpStream::connect(srv.addr).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await?;
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .context("connection still open long after the header timeout")?;
    // Closed (0 bytes, or a reset) or answered with 408; never a served request.
    if let Ok(n) = read {
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.contains(" 408 "), "{text}");
    }
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() -> Result<()> {
    // With a cap of 2, a third connection is not served while two are open, and is served as
    // soon as one of them closes.
    let srv = start(DrainOptions {
        max_connections: 2,
        ..DrainOptions::default()
    })
    .await?;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = TcpStream::connect(srv.addr).await?;
    first.write_all(request).await?;
    assert_eq!(status(&mut first, Duration::from_secs(10)).await?, 200);
    let mut second = TcpStream::connect(srv.addr).await?;
    second.write_all(request).await?;
    assert_eq!(status(&mut second, Duration::from_secs(10)).await?, 200);
    let mut third = TcpStream::connect(srv.addr).await?;
    third.write_all(request).await?;
    assert!(
        status(&mut third, Duration::from_millis(500))
            .await
            .is_err(),
        "third connection served over the cap"
    );
    drop(first);
    assert_eq!(status(&mut third, Duration::from_secs(10)).await?, 200);
    drop((second, third));
    srv.stop().await?;
    Ok(())
}
