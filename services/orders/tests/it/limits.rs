//! The orders server's connection limits, in process: the real server and gRPC health service
//! (no database or tokens needed) with a small `MAX_CONNECTIONS`. Health answers — gRPC
//! `Health/Check` and HTTP `/healthz`, `/readyz` — while idle connections hold every slot and
//! while every slot is busy; other calls on the health reserve are refused; idle connections
//! and slow headers are cut off.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_kit::server::{DrainOptions, Stopped};
use flotilla_kit::{Health, Kit};
use flotilla_testkit::raw_http::{closed, get_sent, h2_used, idle_http1, probe, status};
use orders::{App, GrpcHealth, Traffic};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use warp::Filter as _;

/// Health answers promptly while the server is saturated.
const PROMPT: Duration = Duration::from_millis(100);

struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Stopped>,
    /// How many `/slow` requests have reached their handler.
    slow_entered: tokio::sync::watch::Receiver<usize>,
}

impl Server {
    /// The orders server with its gRPC health service and the kit's HTTP routes, plus an
    /// HTTP `/slow` route that never answers (a request that keeps its connection busy).
    async fn start(opts: DrainOptions) -> Result<Self> {
        let kit = Kit::new(Health::builder().build(), None)?;
        let traffic = Traffic::new();
        let grpc = tonic::service::Routes::new(
            GrpcHealth::new(
                kit.health.clone(),
                kit.faults.clone(),
                traffic.clone(),
                None,
            )
            .server(),
        )
        .prepare();
        let (entered, count) = tokio::sync::watch::channel(0usize);
        let entered = std::sync::Arc::new(entered);
        let slow = warp::path!("slow").and_then(move || {
            let entered = entered.clone();
            async move {
                entered.send_modify(|n| *n += 1);
                std::future::pending::<()>().await;
                Ok::<_, warp::Rejection>(flotilla_kit::tag("/slow", "x"))
            }
        });
        let app = App {
            grpc,
            http: kit.filter(slow),
            health: kit.health.clone(),
            traffic,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let opts = DrainOptions {
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_millis(100),
            ..opts
        };
        let task = tokio::spawn(orders::server::serve(listener, app, opts, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            stop,
            task,
            slow_entered: count,
        })
    }

    async fn stop(self) -> Result<Stopped> {
        let _ = self.stop.send(());
        Ok(self.task.await?)
    }

    async fn channel(&self) -> Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?)
    }
}

/// A gRPC health check on a fresh connection, as the kubelet's gRPC probe: status and time
/// taken, connecting included.
async fn grpc_check(srv: &Server) -> Result<(ServingStatus, Duration)> {
    let start = Instant::now();
    let check = async {
        let mut client = HealthClient::new(srv.channel().await?);
        let resp = client.check(HealthCheckRequest::default()).await?;
        anyhow::Ok(resp.get_ref().status())
    };
    let status = tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .context("no gRPC health answer")??;
    Ok((status, start.elapsed()))
}

/// Asserts that the gRPC health check and each HTTP health path answer within [`PROMPT`],
/// measured per request.
async fn assert_health_prompt(srv: &Server) -> Result<()> {
    let (serving, took) = grpc_check(srv).await?;
    println!("grpc.health.v1.Health/Check: {serving:?} in {took:?}");
    assert_eq!(serving, ServingStatus::Serving);
    assert!(took < PROMPT, "gRPC health check took {took:?}");
    for path in ["/healthz", "/readyz"] {
        let (code, took) = probe(srv.addr, path).await?;
        println!("{path}: {code} in {took:?}");
        assert_eq!(code, 200, "{path}");
        assert!(took < PROMPT, "{path} took {took:?}");
    }
    Ok(())
}

#[tokio::test]
async fn health_answers_while_idle_connections_hold_every_slot() -> Result<()> {
    // Twice MAX_CONNECTIONS idle HTTP/1.1 connections and as many idle HTTP/2 connections
    // cannot keep the probes out: the gRPC health check, /healthz and /readyz on fresh
    // connections each answer within 100 ms.
    const MAX: usize = 16;
    let srv = Server::start(DrainOptions {
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
        assert_health_prompt(&srv).await?;
    }
    drop((idle, h2));
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn health_check_answers_while_every_slot_is_busy_and_other_calls_are_refused() -> Result<()> {
    // With every traffic connection busy (open gRPC health watches, a hanging HTTP request),
    // a new connection lands in the health reserve: the gRPC health check, /healthz and
    // /readyz answer within 100 ms each; a gRPC call other than the check gets UNAVAILABLE
    // and an HTTP request 503, so traffic cannot keep the reserve.
    const MAX: usize = 4;
    let srv = Server::start(DrainOptions {
        max_connections: MAX,
        health_connections: 2,
        ..DrainOptions::default()
    })
    .await?;
    let mut watches = Vec::new();
    for _ in 0..MAX - 1 {
        let mut client = HealthClient::new(srv.channel().await?);
        let mut stream = client
            .watch(HealthCheckRequest::default())
            .await?
            .into_inner();
        let first = stream.message().await?.context("watch ended")?;
        assert_eq!(first.status(), ServingStatus::Serving);
        watches.push((client, stream));
    }
    let busy = get_sent(srv.addr, "/slow").await?;
    // Once the hanging request is in its handler, every traffic connection is busy.
    let mut entered = srv.slow_entered.clone();
    tokio::time::timeout(Duration::from_secs(10), entered.wait_for(|n| *n >= 1))
        .await
        .context("the slow request never arrived")??;
    assert_health_prompt(&srv).await?;

    let mut client = HealthClient::new(srv.channel().await?);
    let refused = client
        .watch(HealthCheckRequest::default())
        .await
        .expect_err("a watch on a health connection");
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");

    let mut http = get_sent(srv.addr, "/slow").await?;
    assert_eq!(status(&mut http, Duration::from_secs(5)).await?, 503);
    closed(&mut http, Duration::from_secs(5)).await?;

    // The busy connections kept their calls.
    for (_, stream) in &mut watches {
        assert!(
            tokio::time::timeout(Duration::from_millis(10), stream.message())
                .await
                .is_err(),
            "a watch ended"
        );
    }
    drop((watches, busy));
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn idle_connections_and_slow_headers_are_cut_off() -> Result<()> {
    // An HTTP/2 connection with no call in progress is closed after the idle timeout, and a
    // client that never finishes its HTTP/1.1 headers after the header read timeout.
    const IDLE: Duration = Duration::from_millis(300);
    let srv = Server::start(DrainOptions {
        idle_timeout: IDLE,
        header_read_timeout: Duration::from_millis(300),
        ..DrainOptions::default()
    })
    .await?;
    let (_sender, task, code) = h2_used(srv.addr, "/healthz").await?;
    assert_eq!(code, 200);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .context("idle HTTP/2 connection still open")??;
    let took = start.elapsed();
    println!("idle HTTP/2 connection closed after {took:?}");
    assert!(took >= IDLE - Duration::from_millis(50), "{took:?}");

    let mut slow = TcpStream::connect(srv.addr).await?;
    slow.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: more than twenty-four bytes\r\n",
    )
    .await?;
    let took = closed(&mut slow, Duration::from_secs(5)).await?;
    println!("slow headers cut off after {took:?}");
    srv.stop().await?;
    Ok(())
}
