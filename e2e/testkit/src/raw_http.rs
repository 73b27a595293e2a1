//! HTTP/1.1 spoken by hand over a TCP stream, for tests of a server's connection handling
//! (limits, timeouts, closes), where a real client's pooling and retries would hide what the
//! server did to the connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
