//! HTTP/1.1 spoken by hand over a TCP stream, and bare prior-knowledge HTTP/2 connections, for
//! tests of a server's connection handling (limits, timeouts, closes), where a real client's
//! pooling and retries would hide what the server did to the connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The sending half of an HTTP/2 connection opened by [`h2_connect`].
pub type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// Reads until the status line is complete; returns its code. Fails after `within`.
pub async fn status(stream: &mut TcpStream, within: Duration) -> Result<u16> {
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

/// Waits until the server closes `stream` (end of file or reset), discarding what it sends;
/// fails after `within`. Returns how long it took.
pub async fn closed(stream: &mut TcpStream, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .context("connection still open")?;
    Ok(start.elapsed())
}

/// A connection with one `GET path` sent (keep-alive); [`status`] waits for its answer.
pub async fn get_sent(addr: SocketAddr, path: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    Ok(s)
}

/// A GET on a fresh connection, as the kubelet probes: its status and how long it took,
/// connecting included. Gives up after 5 s.
pub async fn probe(addr: SocketAddr, path: &str) -> Result<(u16, Duration)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let code = status(&mut s, Duration::from_secs(5))
        .await
        .with_context(|| format!("GET {path}"))?;
    Ok((code, start.elapsed()))
}

/// `n` idle HTTP/1.1 connections to `addr`: every other one silent since connecting, the others
/// kept alive after a `GET path` answered 200.
pub async fn idle_http1(addr: SocketAddr, n: usize, path: &str) -> Result<Vec<TcpStream>> {
    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        if i % 2 == 0 {
            idle.push(TcpStream::connect(addr).await?);
        } else {
            let mut s = get_sent(addr, path).await?;
            anyhow::ensure!(
                status(&mut s, Duration::from_secs(5)).await? == 200,
                "GET {path} did not answer 200"
            );
            idle.push(s);
        }
    }
    Ok(idle)
}

/// An HTTP/2 (prior knowledge) connection to `addr`: the sender and the task driving the
/// connection, which ends when the server closes it.
pub async fn h2_connect(addr: SocketAddr) -> Result<(H2Sender, JoinHandle<()>)> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, task))
}

/// `GET path` on an HTTP/2 connection to `addr`; its status. Gives up after 5 s.
pub async fn h2_get(sender: &mut H2Sender, addr: SocketAddr, path: &str) -> Result<u16> {
    let req = http::Request::get(format!("http://{addr}{path}")).body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .context("no HTTP/2 answer")??;
    Ok(resp.status().as_u16())
}

/// An HTTP/2 connection to `addr` that has answered one `GET path`: the sender, the task driving
/// the connection, and the status.
pub async fn h2_used(addr: SocketAddr, path: &str) -> Result<(H2Sender, JoinHandle<()>, u16)> {
    let (mut sender, task) = h2_connect(addr).await?;
    let code = h2_get(&mut sender, addr, path).await?;
    Ok((sender, task, code))
}
