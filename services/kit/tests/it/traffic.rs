//! The traffic verdict over real connections: after `Flotilla-Traffic: ejected` (or the pod's
//! own readiness failing, or draining) a pooled keep-alive client and an HTTP/2 client send
//! their next requests on NEW connections; `serving` restores keep-alive. Only verdicts the
//! operator's key signed for this pod count: a client's spoofed `ejected` changes nothing.
//! Connections are told apart on the server side, by the client port each request arrived from.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use flotilla_kit::server::{DrainOptions, PeerAddr, Running};
use flotilla_kit::traffic::TRAFFIC_HEADER;
use flotilla_kit::verdict::testing::TestSigner;
use flotilla_kit::verdict::{unix_ms_now, VerdictCheck, SIGNATURE_HEADER};
use flotilla_kit::{tag, FaultConfig, Health, Kit};
use flotilla_testkit::raw_http::{h2_connect, H2Sender};
use flotilla_testkit::wait::poll;
use http_body_util::{BodyExt, Empty};
use tokio::net::TcpListener;
use warp::Filter;

/// A kit service whose `GET /peer` answers with the client port of the connection it came on.
async fn start(shutdown_delay: Duration) -> Result<(Running, Kit)> {
    let check = VerdictCheck::new(Some(POD.into()), &operator().keys_entry())?;
    let kit = Kit::new(Health::builder().verdicts(check).build(), None)?;
    let api = warp::path!("peer")
        .and(warp::get())
        .and(warp::ext::optional::<PeerAddr>())
        .map(|p: Option<PeerAddr>| tag("/peer", p.map_or(0, |p| p.0.port()).to_string()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let opts = DrainOptions {
        shutdown_delay,
        drain_timeout: Duration::from_secs(20),
        ..DrainOptions::default()
    };
    let running = Running::start(listener, kit.filter(api), kit.health.clone(), opts)?;
    Ok((running, kit))
}

/// The server-side client port of one request, and whether the response asked to close.
async fn peer(http: &reqwest::Client, srv: &Running) -> Result<(u16, bool)> {
    let r = http.get(format!("{}/peer", srv.url())).send().await?;
    let close = r
        .headers()
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    Ok((r.text().await?.parse()?, close))
}

/// The pod's name, as Flotilla gives it in `POD_NAME`.
const POD: &str = "users-7d9f-abcde";

/// The operator's verdict key.
fn operator() -> TestSigner {
    TestSigner::new("k1", [42; 32])
}

/// A readiness probe as the leading prober sends it (fresh connection), with an optional
/// verdict signed by the operator's key.
async fn probe(srv: &Running, verdict: Option<&str>) -> Result<u16> {
    let signed = verdict.map(|v| (v, Some(operator().header(POD, v, unix_ms_now()))));
    probe_as(srv, signed).await
}

/// A readiness probe with a verdict and whatever signature header the sender has.
async fn probe_as(srv: &Running, verdict: Option<(&str, Option<String>)>) -> Result<u16> {
    let prober = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut req = prober.get(format!("{}/readyz", srv.url()));
    if let Some((v, sig)) = verdict {
        req = req.header("Flotilla-Traffic", v);
        if let Some(sig) = sig {
            req = req.header(SIGNATURE_HEADER, sig);
        }
    }
    Ok(req.send().await?.status().as_u16())
}

/// Waits until the server holds no connection open: the pooled client's idle connection was
/// closed by the server (the probes use connections of their own that close too). Without
/// this wait the client could send on the connection in the instant the server closes it.
async fn wait_all_closed(kit: &Kit) -> Result<()> {
    let traffic = kit.health.traffic();
    poll(
        "the server to close every connection",
        Duration::from_secs(10),
        || {
            let open = traffic.open_connections();
            async move {
                match open {
                    0 => Ok(Some(())),
                    n => bail!("{n} connections still open"),
                }
            }
        },
    )
    .await
}

/// Three requests on a pooled client: each on its own new connection, none on `old`.
async fn assert_new_connections(http: &reqwest::Client, srv: &Running, old: u16) -> Result<()> {
    let mut ports = Vec::new();
    for _ in 0..3 {
        let (port, close) = peer(http, srv).await?;
        assert!(close, "response while closing lacks Connection: close");
        ports.push(port);
    }
    assert!(
        !ports.contains(&old),
        "old connection {old} reused: {ports:?}"
    );
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ports.len(),
        "a connection was reused: {ports:?}"
    );
    Ok(())
}

/// Two requests on one kept-alive connection.
async fn assert_keep_alive(http: &reqwest::Client, srv: &Running) -> Result<u16> {
    let (a, close_a) = peer(http, srv).await?;
    let (b, close_b) = peer(http, srv).await?;
    assert!(!close_a && !close_b, "keep-alive response asked to close");
    assert_eq!(a, b, "pooled client did not keep its connection");
    Ok(a)
}

#[tokio::test]
async fn pooled_client_reconnects_after_ejected_and_keeps_alive_after_serving() -> Result<()> {
    // `ejected` on a probe makes the pooled client's next requests use new connections;
    // `serving` brings keep-alive back.
    let (srv, kit) = start(Duration::ZERO).await?;
    let http = reqwest::Client::new();
    let first = assert_keep_alive(&http, &srv).await?;
    assert_eq!(probe(&srv, Some("ejected")).await?, 200);
    assert!(kit.health.traffic().closing());
    wait_all_closed(&kit).await?;
    assert_new_connections(&http, &srv, first).await?;
    assert_eq!(probe(&srv, Some("serving")).await?, 200);
    assert_keep_alive(&http, &srv).await?;
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_spoofed_ejected_verdict_changes_nothing_and_is_counted() -> Result<()> {
    // Any client that reaches /readyz used to turn keep-alive off with `Flotilla-Traffic:
    // ejected`. Unsigned, forged, stale, or signed for another pod, it is now ignored and
    // counted by outcome in /metrics; keep-alive stays on.
    let (srv, kit) = start(Duration::ZERO).await?;
    let http = reqwest::Client::new();
    let now = unix_ms_now();
    let attacker = TestSigner::new("k1", [7; 32]);
    let attempts = [
        None,
        Some(attacker.header(POD, "ejected", now)),
        Some(operator().header("another-pod", "ejected", now)),
        Some(operator().header(POD, "ejected", now - 60_000)),
    ];
    for sig in attempts {
        assert_eq!(probe_as(&srv, Some(("ejected", sig))).await?, 200);
        assert!(
            !kit.health.traffic().closing(),
            "a spoofed verdict was acted on"
        );
    }
    assert_keep_alive(&http, &srv).await?;
    let metrics = http
        .get(format!("{}/metrics", srv.url()))
        .send()
        .await?
        .text()
        .await?;
    for (outcome, n) in [("unsigned", 1), ("forged", 2), ("stale", 1)] {
        let line = format!("flotilla_traffic_verdicts_total{{outcome=\"{outcome}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn failing_own_readiness_closes_connections_without_being_told() -> Result<()> {
    // A pod whose own /readyz fails (no verdict header, as the kubelet probes) closes its
    // persistent connections; when it passes again keep-alive returns.
    let (srv, kit) = start(Duration::ZERO).await?;
    let http = reqwest::Client::new();
    let first = assert_keep_alive(&http, &srv).await?;
    kit.faults
        .set(FaultConfig {
            unhealthy: true,
            ..FaultConfig::default()
        })
        .map_err(anyhow::Error::msg)?;
    assert_eq!(probe(&srv, None).await?, 503);
    wait_all_closed(&kit).await?;
    assert_new_connections(&http, &srv, first).await?;
    kit.faults.clear();
    assert_eq!(probe(&srv, None).await?, 200);
    assert_keep_alive(&http, &srv).await?;
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn draining_closes_idle_connections_at_once() -> Result<()> {
    // On shutdown the server closes keep-alive connections at the start of the delay, not
    // when the listener closes: clients move while it still accepts.
    let (mut srv, kit) = start(Duration::from_secs(15)).await?;
    let http = reqwest::Client::new();
    let first = assert_keep_alive(&http, &srv).await?;
    srv.trigger_stop();
    poll(
        "the server to start draining",
        Duration::from_secs(20),
        || {
            let draining = kit.health.is_draining();
            async move { Ok(draining.then_some(())) }
        },
    )
    .await?;
    wait_all_closed(&kit).await?;
    assert_new_connections(&http, &srv, first).await?;
    Ok(())
}

async fn h2_peer(sender: &mut H2Sender, srv: &Running) -> Result<u16> {
    let req = http::Request::get(format!("{}/peer", srv.url())).body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert!(resp.headers().get("connection").is_none());
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(std::str::from_utf8(&body)?.parse()?)
}

#[tokio::test]
async fn http2_connection_gets_goaway_after_ejected() -> Result<()> {
    // An HTTP/2 client's connection is ended by the server (GOAWAY) after `ejected`; its next
    // connection is a new one and is served.
    let (srv, _kit) = start(Duration::ZERO).await?;
    let (mut sender, conn) = h2_connect(srv.addr).await?;
    let a = h2_peer(&mut sender, &srv).await?;
    assert_eq!(
        h2_peer(&mut sender, &srv).await?,
        a,
        "one HTTP/2 connection"
    );
    assert_eq!(probe(&srv, Some("ejected")).await?, 200);
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .context("the server never closed the HTTP/2 connection")??;
    assert!(sender.is_closed() || sender.ready().await.is_err());
    let (mut again, _conn) = h2_connect(srv.addr).await?;
    let b = h2_peer(&mut again, &srv).await?;
    assert_ne!(a, b);
    srv.stop().await?;
    Ok(())
}

#[test]
fn header_name_is_the_contract_name() {
    // The prober sends `Flotilla-Traffic`; header names are case-insensitive.
    assert!("Flotilla-Traffic".eq_ignore_ascii_case(TRAFFIC_HEADER));
}
