//! Bounded metrics scraping over real HTTP: pods whose `/metrics` bodies are tens of megabytes
//! of tiny lines are scraped by the engine while the process's peak memory stays within a stated
//! bound, the oversize scrapes are counted by reason, and no pod loses traffic over it.
//!
//! The pods stream their bodies from one shared chunk, so the servers themselves allocate next
//! to nothing and the memory measured is the scraping side's.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use flotilla_crds::labels;
use flotilla_operator::failover::decide::Membership;
use flotilla_operator::failover::engine::{self, EngineConfig};
use flotilla_operator::failover::inventory::{Inventory, ObjKey, PodInfo, ServiceInfo};
use flotilla_operator::failover::metrics::Metrics;
use flotilla_operator::failover::policy::{FailoverPolicy, ProbePolicy};
use flotilla_operator::failover::scrape::ScrapeLimits;
use flotilla_testkit::memory::resident_mib;
use flotilla_testkit::wait::poll;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Size of every pod's metrics body: far above the 4 MiB scrape cap.
const BODY_BYTES: usize = 48 << 20;
/// Pods whose bodies are tiny sample lines (rejected at the series cap).
const SERIES_PODS: u8 = 24;
/// Pods whose bodies are comment lines (rejected at the byte cap).
const BYTES_PODS: u8 = 8;
/// The byte cap of this test: lower than the default so a debug build on a loaded machine reads
/// up to it well within the probe timeout.
const MAX_BODY_BYTES: usize = 1 << 20;
/// The stated bound: growth of the process's peak resident memory while scraping.
const RSS_BOUND_MIB: f64 = 24.0;

type Body = Either<
    Full<Bytes>,
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

/// One 64 KiB chunk of either tiny sample lines or comment lines, shared by every response.
fn chunk(comments: bool) -> Bytes {
    let mut s = String::new();
    let mut i = 0u64;
    while s.len() < (64 << 10) - 64 {
        if comments {
            s.push_str("# padding padding padding padding padding padding\n");
        } else {
            s.push_str(&format!("x{{i=\"{i}\"}} 1\n"));
        }
        i += 1;
    }
    Bytes::from(s)
}

async fn handle(
    chunk: Bytes,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/metrics" {
        let head = Bytes::from_static(b"http_requests_total{status=\"200\"} 100\n");
        let frames: Vec<_> = std::iter::once(head)
            .chain(std::iter::repeat_n(chunk, BODY_BYTES / (64 << 10)))
            .map(|b| Ok(Frame::data(b)))
            .collect();
        return Ok(Response::new(Either::Right(StreamBody::new(
            futures::stream::iter(frames),
        ))));
    }
    Ok(Response::new(Either::Left(Full::new(Bytes::from_static(
        b"ready\n",
    )))))
}

/// Starts `n` pods on `127.9.<b>.k`, sharing one port, all serving `chunk` as metrics.
async fn start_pods(b: u8, n: u8, chunk: Bytes) -> Result<(u16, Vec<tokio::task::JoinHandle<()>>)> {
    'attempt: for _ in 0..20 {
        let first = TcpListener::bind((Ipv4Addr::new(127, 9, b, 1), 0)).await?;
        let port = first.local_addr()?.port();
        let mut listeners = vec![first];
        for k in 2..=n {
            match TcpListener::bind((Ipv4Addr::new(127, 9, b, k), port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'attempt,
            }
        }
        let tasks = listeners
            .into_iter()
            .map(|l| {
                let chunk = chunk.clone();
                tokio::spawn(async move {
                    while let Ok((stream, _)) = l.accept().await {
                        let chunk = chunk.clone();
                        tokio::spawn(async move {
                            let svc =
                                hyper::service::service_fn(move |req| handle(chunk.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                })
            })
            .collect();
        return Ok((port, tasks));
    }
    bail!("no common free port on 127.9.{b}.x")
}

fn service(name: &str, port: u16) -> ServiceInfo {
    ServiceInfo {
        key: ObjKey::new("t", name),
        uid: None,
        generation: Some(1),
        failover_enabled: true,
        analysing: false,
        // A long timeout: the scrape shares it, and reading 4 MiB in a debug build on a loaded
        // machine takes a while; this test is about memory, not speed.
        probe: ProbePolicy {
            period: Duration::from_millis(500),
            timeout: Duration::from_secs(3),
            port,
            ..ProbePolicy::default()
        },
        failover: FailoverPolicy {
            scrape_metrics: true,
            max_error_rate: Some(0.1),
            ..FailoverPolicy::default()
        },
        port_name: "http".into(),
        report_traffic: true,
        scrape_only: false,
        status: None,
        traffic: None,
        conditions: vec![],
    }
}

fn pods(svc: &str, b: u8, n: u8, port: u16) -> Vec<PodInfo> {
    (1..=n)
        .map(|k| PodInfo {
            key: ObjKey::new("t", format!("{svc}-{k}")),
            service: svc.to_owned(),
            ip: Some(SocketAddr::from((Ipv4Addr::new(127, 9, b, k), port)).ip()),
            ready: true,
            serves: [(labels::serves(svc), "true".to_owned())].into(),
            uid: Some(format!("uid-{svc}-{k}")),
            canary: false,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_metrics_bodies_are_rejected_within_a_memory_bound_and_never_eject() -> Result<()> {
    // Pods serving 48 MiB of tiny sample lines or of comments are scraped with bounded memory:
    // the scrapes are rejected by reason, and the pods keep their traffic.
    let (p1, _s1) = start_pods(1, SERIES_PODS, chunk(false)).await?;
    let (p2, _s2) = start_pods(2, BYTES_PODS, chunk(true)).await?;
    let inv = Inventory::from_parts(
        [service("series", p1), service("bytes", p2)],
        pods("series", 1, SERIES_PODS, p1)
            .into_iter()
            .chain(pods("bytes", 2, BYTES_PODS, p2)),
    );
    // Reset the peak so it measures from here; the baseline is the memory in use now.
    std::fs::write("/proc/self/clear_refs", "5")?;
    let (base, _) = resident_mib("self")?;
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(inv));
    let metrics = Metrics::new()?;
    let cfg = EngineConfig {
        scrape_limits: ScrapeLimits {
            max_body_bytes: MAX_BODY_BYTES,
            ..ScrapeLimits::default()
        },
        ..EngineConfig::default()
    };
    let (mut out, _thread) = engine::spawn(rx, metrics.clone(), cfg)?;
    let rejected = |r: &str| metrics.scrape_rejected.with_label_values(&[r]).get();
    poll(
        "two rejected scrapes of every pod",
        Duration::from_secs(60),
        || async {
            if rejected("too_many_series") < 2 * u64::from(SERIES_PODS)
                || rejected("body_too_large") < 2 * u64::from(BYTES_PODS)
            {
                bail!(
                    "too_many_series {}, body_too_large {}, timeout {}, transport {}",
                    rejected("too_many_series"),
                    rejected("body_too_large"),
                    rejected("timeout"),
                    rejected("transport")
                );
            }
            Ok(Some(()))
        },
    )
    .await?;
    let (_, peak) = resident_mib("self")?;
    let growth = peak - base;
    println!(
        "baseline RSS {base:.1} MiB, peak {peak:.1} MiB (+{growth:.1} MiB); rejected: \
         too_many_series {}, body_too_large {}, busy {}, timeout {}",
        rejected("too_many_series"),
        rejected("body_too_large"),
        rejected("busy"),
        rejected("timeout")
    );
    assert!(
        growth < RSS_BOUND_MIB,
        "peak resident memory grew by {growth:.1} MiB while scraping (bound {RSS_BOUND_MIB} MiB)"
    );
    // No data is never a failure verdict: every pod still serves.
    let d = out.desired.borrow_and_update().clone();
    let members: Vec<_> = d.services.values().flat_map(|s| s.members.iter()).collect();
    assert_eq!(members.len(), usize::from(SERIES_PODS + BYTES_PODS));
    assert!(
        members.iter().all(|m| m.to == Membership::In),
        "{members:?}"
    );
    assert_eq!(metrics.probes.with_label_values(&["error_rate"]).get(), 0);
    Ok(())
}
