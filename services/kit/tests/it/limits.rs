//! The server's resource limits over raw TCP and HTTP/2: chunked bodies refused while they are
//! read, the admin token checked before any body is read, slow headers and stalled bodies cut
//! off, idle connections closed, silent HTTP/2 peers dropped, and health answering while every
//! connection slot is taken, by idle connections or by busy ones.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_kit::server::{DrainOptions, Running};
use flotilla_kit::{Health, Kit};
use flotilla_testkit::raw_http::{closed, get_sent, h2_used, idle_http1, probe, status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use warp::Filter;

const TOKEN: &str = "9f2c1e7a4b8d0c3e6f1a5b9d";

async fn start(opts: DrainOptions) -> Result<Running> {
    Ok(start_counting(opts).await?.0)
}

/// The server, and how many `/slow` requests have reached their handler: `/slow` never
/// answers, a request that keeps its connection busy.
async fn start_counting(opts: DrainOptions) -> Result<(Running, watch::Receiver<usize>)> {
    let kit = Kit::new(Health::builder().build(), Some(TOKEN.to_owned()))?;
    let never = warp::path!("never").map(|| flotilla_kit::tag("/never", "x"));
    let (entered, count) = watch::channel(0usize);
    let entered = std::sync::Arc::new(entered);
    let slow = warp::path!("slow").and_then(move || {
        let entered = entered.clone();
        async move {
            entered.send_modify(|n| *n += 1);
            std::future::pending::<()>().await;
            Ok::<_, warp::Rejection>(flotilla_kit::tag("/slow", "x"))
        }
    });
    let api = never.or(slow).unify();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    // No test here is about the shutdown delay; do not wait for it at the end.
    let opts = DrainOptions {
        shutdown_delay: Duration::ZERO,
        ..opts
    };
    let running = Running::start(listener, kit.filter(api), kit.health.clone(), opts)?;
    Ok((running, count))
}

/// Waits until `n` `/slow` requests are in their handler: their connections are busy.
async fn busy(count: &mut watch::Receiver<usize>, n: usize) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(10), count.wait_for(|c| *c >= n))
        .await
        .context("slow requests never arrived")??;
    Ok(())
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

/// Health answers promptly while the server is saturated.
const PROMPT: Duration = Duration::from_millis(100);

/// Asserts that each health path answers 200 within [`PROMPT`], measured per request.
async fn assert_health_prompt(addr: SocketAddr, paths: &[&str]) -> Result<()> {
    for path in paths {
        let (code, took) = probe(addr, path).await?;
        println!("{path}: {code} in {took:?}");
        assert_eq!(code, 200, "{path}");
        assert!(took < PROMPT, "{path} took {took:?}");
    }
    Ok(())
}

#[tokio::test]
async fn health_answers_while_idle_connections_hold_every_slot() -> Result<()> {
    // Twice MAX_CONNECTIONS idle HTTP/1.1 connections (half silent since connecting, half
    // kept alive after a request) and as many idle HTTP/2 connections cannot keep a probe
    // out: /healthz and /readyz on a fresh connection answer 200 within 100 ms each.
    const MAX: usize = 16;
    let srv = start(DrainOptions {
        max_connections: MAX,
        ..DrainOptions::default()
    })
    .await?;
    let idle = idle_http1(srv.addr, 2 * MAX, "/healthz").await?;
    let mut h2 = Vec::new();
    for _ in 0..2 * MAX {
        let (sender, task, code) = h2_used(srv.addr, "/healthz").await?;
        assert_eq!(code, 200);
        h2.push((sender, task));
    }
    for _ in 0..3 {
        assert_health_prompt(srv.addr, &["/healthz", "/readyz"]).await?;
    }
    drop((idle, h2));
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn health_answers_while_every_slot_is_busy_and_traffic_gets_503() -> Result<()> {
    // With every traffic connection busy, a new connection lands in the health reserve:
    // /healthz, /readyz and /metrics answer within 100 ms each; any other request there is
    // answered 503 and the connection closed (HTTP/1.1 and HTTP/2), so traffic cannot keep
    // the reserve.
    const MAX: usize = 4;
    let (srv, mut count) = start_counting(DrainOptions {
        max_connections: MAX,
        health_connections: 2,
        // The busy requests never finish; do not wait for them at the end.
        drain_timeout: Duration::from_millis(100),
        ..DrainOptions::default()
    })
    .await?;
    let mut slow = Vec::new();
    for _ in 0..MAX {
        slow.push(get_sent(srv.addr, "/slow").await?);
    }
    busy(&mut count, MAX).await?;
    assert_health_prompt(srv.addr, &["/healthz", "/readyz", "/metrics"]).await?;

    let mut refused = get_sent(srv.addr, "/never").await?;
    assert_eq!(status(&mut refused, Duration::from_secs(5)).await?, 503);
    closed(&mut refused, Duration::from_secs(5)).await?;

    let (_sender, task, code) = h2_used(srv.addr, "/never").await?;
    assert_eq!(code, 503);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .context("HTTP/2 connection kept after a refused request")??;

    // The busy connections are still served: nothing was taken from them.
    for s in &mut slow {
        let mut buf = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf))
                .await
                .is_err(),
            "a busy connection was closed"
        );
    }
    drop(slow);
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_new_connection_takes_the_slot_of_the_longest_idle_one() -> Result<()> {
    // With a cap of 2 and both connections idle, a third is served at once; the connection
    // idle longest is closed to make room, the other is kept.
    let srv = start(DrainOptions {
        max_connections: 2,
        health_connections: 1,
        ..DrainOptions::default()
    })
    .await?;
    let mut first = get_sent(srv.addr, "/never").await?;
    assert_eq!(status(&mut first, Duration::from_secs(5)).await?, 200);
    let mut second = get_sent(srv.addr, "/never").await?;
    assert_eq!(status(&mut second, Duration::from_secs(5)).await?, 200);
    let mut third = get_sent(srv.addr, "/never").await?;
    assert_eq!(status(&mut third, Duration::from_secs(5)).await?, 200);
    closed(&mut first, Duration::from_secs(5)).await?;
    second
        .write_all(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    assert_eq!(status(&mut second, Duration::from_secs(5)).await?, 200);
    drop((second, third));
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() -> Result<()> {
    // A connection that never sent a request, an HTTP/1.1 keep-alive connection after its
    // answer and an HTTP/2 connection with no open stream are each closed once idle for the
    // idle timeout; a connection with a request in progress is not.
    const IDLE: Duration = Duration::from_millis(300);
    let (srv, mut count) = start_counting(DrainOptions {
        idle_timeout: IDLE,
        drain_timeout: Duration::from_millis(100),
        ..DrainOptions::default()
    })
    .await?;
    let mut slow = get_sent(srv.addr, "/slow").await?;
    busy(&mut count, 1).await?;
    let mut silent = TcpStream::connect(srv.addr).await?;
    let took = closed(&mut silent, Duration::from_secs(5)).await?;
    println!("silent connection closed after {took:?}");
    assert!(took >= IDLE - Duration::from_millis(50), "{took:?}");

    let mut kept = get_sent(srv.addr, "/healthz").await?;
    assert_eq!(status(&mut kept, Duration::from_secs(5)).await?, 200);
    let took = closed(&mut kept, Duration::from_secs(5)).await?;
    println!("HTTP/1.1 keep-alive connection closed after {took:?}");
    assert!(took >= IDLE - Duration::from_millis(50), "{took:?}");

    let (_sender, task, code) = h2_used(srv.addr, "/healthz").await?;
    assert_eq!(code, 200);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .context("idle HTTP/2 connection still open")??;
    let took = start.elapsed();
    println!("HTTP/2 connection closed after {took:?}");
    assert!(took >= IDLE - Duration::from_millis(50), "{took:?}");

    // By now the busy connection has been open for several idle timeouts.
    let mut buf = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf))
            .await
            .is_err(),
        "a connection with a request in progress was closed"
    );
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn stalled_or_trickled_body_gets_408_within_the_bound() -> Result<()> {
    // A client that sends headers and then stalls its body, or trickles it a byte at a time,
    // is answered 408 once the body read timeout has passed, and its connection closes.
    const BODY: Duration = Duration::from_millis(300);
    let srv = start(DrainOptions {
        body_read_timeout: BODY,
        ..DrainOptions::default()
    })
    .await?;
    let head = format!(
        "POST /admin/faults HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );

    let mut stalled = TcpStream::connect(srv.addr).await?;
    let start = Instant::now();
    stalled.write_all(head.as_bytes()).await?;
    assert_eq!(status(&mut stalled, Duration::from_secs(5)).await?, 408);
    let took = start.elapsed();
    println!("stalled body: 408 after {took:?}");
    assert!(took >= BODY - Duration::from_millis(50), "{took:?}");
    closed(&mut stalled, Duration::from_secs(5)).await?;

    let trickled = TcpStream::connect(srv.addr).await?;
    let (mut read, mut write) = trickled.into_split();
    let start = Instant::now();
    write.write_all(head.as_bytes()).await?;
    let feeder = tokio::spawn(async move {
        // One byte every 50 ms: each arrives well within any per-read timeout. The pace is
        // the behaviour under test (a trickled body), so this is a sleep, not a wait.
        while write.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = read.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "closed without an answer");
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })
    .await
    .context("no answer to a trickled body")??;
    let took = start.elapsed();
    println!(
        "trickled body: {:?} after {took:?}",
        String::from_utf8_lossy(&buf).lines().next()
    );
    assert!(
        buf.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    feeder.abort();
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn silent_http2_peer_is_dropped_by_keepalive() -> Result<()> {
    // An HTTP/2 peer that stops answering (here: never acknowledges a ping) is disconnected
    // after the keepalive interval and timeout, long before the idle timeout.
    let srv = start(DrainOptions {
        h2_keepalive_interval: Duration::from_millis(200),
        h2_keepalive_timeout: Duration::from_millis(200),
        ..DrainOptions::default()
    })
    .await?;
    let mut s = TcpStream::connect(srv.addr).await?;
    // Connection preface and an empty SETTINGS frame; then silence.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await?;
    let took = closed(&mut s, Duration::from_secs(5)).await?;
    println!("silent HTTP/2 peer dropped after {took:?}");
    assert!(took >= Duration::from_millis(350), "{took:?}");
    srv.stop().await?;
    Ok(())
}
