//! The kit over real HTTP on loopback: metrics after known traffic, fault injection and its
//! token guard, request ids, and graceful shutdown that drops no in-flight request.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_kit::server::{DrainOptions, Running, Stopped};
use flotilla_kit::{tag, Health, Kit};
use flotilla_testkit::wait::poll;
use reqwest::Method;
use tokio::net::TcpListener;
use warp::Filter;

const TOKEN: &str = "test-admin-token";

/// A kit service with one API route, `GET /echo/{id}`, behind the fault gate.
async fn start(admin: bool, shutdown_delay: Duration) -> Result<(Running, Kit)> {
    let kit = Kit::new(Health::builder().build(), admin.then(|| TOKEN.to_owned()))?;
    let api = warp::path!("echo" / u64)
        .and(warp::get())
        .and(kit.faults.gate("/echo/{id}"))
        .map(|id: u64| tag("/echo/{id}", format!("echo {id}")));
    let filter = kit.filter(api);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let opts = DrainOptions {
        shutdown_delay,
        drain_timeout: Duration::from_secs(30),
        ..DrainOptions::default()
    };
    let running = Running::start(listener, filter, kit.health.clone(), opts)?;
    Ok((running, kit))
}

/// Finds the value of the sample with exactly this name and label set in Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let mut got: Vec<(String, String)> = rest
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            got.sort();
            let mut want: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            want.sort();
            (got == want).then(|| value.parse().ok()).flatten()
        })
}

#[tokio::test]
async fn metrics_count_known_traffic_by_template() -> Result<()> {
    // After known traffic the counters hold exactly those requests, labelled by template.
    let (srv, _kit) = start(false, Duration::ZERO).await?;
    let http = reqwest::Client::new();
    for id in 1..=3 {
        let r = http.get(format!("{}/echo/{id}", srv.url())).send().await?;
        assert_eq!(r.status(), 200);
    }
    let r = http.get(format!("{}/nowhere/7", srv.url())).send().await?;
    assert_eq!(r.status(), 404);
    let r = http.post(format!("{}/echo/1", srv.url())).send().await?;
    assert_eq!(r.status(), 405);
    let text = http
        .get(format!("{}/metrics", srv.url()))
        .send()
        .await?
        .text()
        .await?;
    let get = |route: &str, status: &str, method: &str| {
        sample(
            &text,
            "http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(get("/echo/{id}", "200", "GET"), Some(3.0));
    assert_eq!(get("unmatched", "404", "GET"), Some(1.0));
    assert_eq!(get("unmatched", "405", "POST"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "http_request_duration_seconds_count",
            &[("method", "GET"), ("route", "/echo/{id}")]
        ),
        Some(3.0)
    );
    assert!(!text.contains("/echo/1"), "raw path leaked into labels");
    #[cfg(target_os = "linux")]
    assert!(sample(&text, "process_resident_memory_bytes", &[]).is_some());
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() -> Result<()> {
    // Callers get their own x-request-id back, or a generated one when they sent none.
    let (srv, _kit) = start(false, Duration::ZERO).await?;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/healthz", srv.url()))
        .header("x-request-id", "req-42")
        .send()
        .await?;
    assert_eq!(
        r.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"req-42"[..])
    );
    let r = http.get(format!("{}/healthz", srv.url())).send().await?;
    let id = r.headers().get("x-request-id").context("no request id")?;
    assert_eq!(id.len(), 36);
    srv.stop().await?;
    Ok(())
}

/// One request of a [`Case`] and what it must get.
struct Step {
    method: Method,
    path: &'static str,
    /// The bearer token sent, if any.
    token: Option<&'static str>,
    /// The JSON body sent, if any.
    body: Option<&'static str>,
    status: u16,
    /// A check of the reply's body beyond its status.
    expect: Expect,
}

enum Expect {
    Nothing,
    /// The JSON value at this pointer (`""`: the whole body) equals the given JSON.
    Json(&'static str, &'static str),
    /// This Prometheus sample (name, labels) has this value.
    Sample(&'static str, &'static [(&'static str, &'static str)], f64),
}

/// A request as a plain caller sends it.
fn get(path: &'static str, status: u16) -> Step {
    Step {
        method: Method::GET,
        path,
        token: None,
        body: None,
        status,
        expect: Expect::Nothing,
    }
}

/// A request to the admin address with the admin token.
fn admin(method: Method, body: Option<&'static str>, status: u16) -> Step {
    Step {
        method,
        path: "/admin/faults",
        token: Some(TOKEN),
        body,
        status,
        expect: Expect::Nothing,
    }
}

impl Step {
    fn token(self, token: Option<&'static str>) -> Self {
        Self { token, ..self }
    }
    fn expect(self, expect: Expect) -> Self {
        Self { expect, ..self }
    }
}

/// A named scenario: a fresh kit service (with or without `ADMIN_TOKEN`), the faults set on it
/// through the admin address, then requests and what each must get.
struct Case {
    name: &'static str,
    admin: bool,
    faults: Option<&'static str>,
    steps: Vec<Step>,
}

/// Faults that fail the API and readiness at once.
const BROKEN: &str = r#"{"errorRate": 1.0, "unhealthy": true}"#;

fn admin_and_fault_cases() -> Vec<Case> {
    let case = |name, admin, faults, steps| Case {
        name,
        admin,
        faults,
        steps,
    };
    vec![
        // Without ADMIN_TOKEN the admin routes do not exist; with it, a bearer is required.
        case(
            "without ADMIN_TOKEN there is no admin address",
            false,
            None,
            vec![get("/admin/faults", 404)],
        ),
        case(
            "reading the faults needs the token",
            true,
            None,
            vec![get("/admin/faults", 401)],
        ),
        case(
            "a wrong token is refused and changes nothing",
            true,
            None,
            vec![
                admin(Method::POST, Some(r#"{"errorRate": 1.0}"#), 401).token(Some("wrong")),
                get("/echo/1", 200),
            ],
        ),
        case(
            "the token reads the faults, none set",
            true,
            None,
            vec![admin(Method::GET, None, 200).expect(Expect::Json(
                "",
                r#"{"unhealthy": false, "flakyReadiness": false, "errorRate": 0.0, "latencyMs": 0}"#,
            ))],
        ),
        // Invalid bodies are refused.
        case(
            "an error rate above 1 is refused",
            true,
            None,
            vec![admin(Method::POST, Some(r#"{"errorRate": 2.0}"#), 400)],
        ),
        case(
            "an unknown field is refused",
            true,
            None,
            vec![admin(Method::POST, Some(r#"{"bogus": true}"#), 400)],
        ),
        // errorRate fails API calls but not health/metrics; unhealthy fails readiness only.
        case(
            "errorRate fails API calls",
            true,
            Some(BROKEN),
            vec![get("/echo/5", 500)],
        ),
        case(
            "errorRate spares /healthz",
            true,
            Some(BROKEN),
            vec![get("/healthz", 200)],
        ),
        case(
            "errorRate spares /metrics",
            true,
            Some(BROKEN),
            vec![get("/metrics", 200)],
        ),
        case(
            "unhealthy fails readiness, naming the faults check",
            true,
            Some(BROKEN),
            vec![get("/readyz", 503).expect(Expect::Json("/failing/0/check", r#""faults""#))],
        ),
        case(
            "injected 500s are counted under the route they hit",
            true,
            Some(BROKEN),
            vec![
                get("/echo/5", 500),
                get("/metrics", 200).expect(Expect::Sample(
                    "http_requests_total",
                    &[
                        ("method", "GET"),
                        ("route", "/echo/{id}"),
                        ("status", "500"),
                    ],
                    1.0,
                )),
            ],
        ),
        // DELETE restores normal service.
        case(
            "DELETE restores the API",
            true,
            Some(BROKEN),
            vec![admin(Method::DELETE, None, 200), get("/echo/5", 200)],
        ),
        case(
            "DELETE restores readiness",
            true,
            Some(BROKEN),
            vec![admin(Method::DELETE, None, 200), get("/readyz", 200)],
        ),
    ]
}

#[tokio::test]
async fn admin_address_and_faults_table() -> Result<()> {
    // Each row holds on a fresh service: the admin address exists only with ADMIN_TOKEN and
    // needs it as a bearer; invalid fault bodies are refused; errorRate fails API routes only,
    // unhealthy fails readiness only, and DELETE restores both.
    let http = reqwest::Client::new();
    for case in admin_and_fault_cases() {
        let name = case.name;
        let (srv, _kit) = start(case.admin, Duration::ZERO).await?;
        if let Some(faults) = case.faults {
            let r = http
                .post(format!("{}/admin/faults", srv.url()))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(faults)
                .send()
                .await?;
            assert_eq!(r.status(), 200, "{name}: setting {faults}");
        }
        for (i, step) in case.steps.iter().enumerate() {
            let what = format!("{name}, step {i}: {} {}", step.method, step.path);
            let mut req = http.request(step.method.clone(), format!("{}{}", srv.url(), step.path));
            if let Some(token) = step.token {
                req = req.bearer_auth(token);
            }
            if let Some(body) = step.body {
                req = req.header("content-type", "application/json").body(body);
            }
            let r = req.send().await.with_context(|| what.clone())?;
            assert_eq!(r.status(), step.status, "{what}");
            let text = r.text().await?;
            match &step.expect {
                Expect::Nothing => {}
                Expect::Json(pointer, want) => {
                    let got: serde_json::Value =
                        serde_json::from_str(&text).with_context(|| what.clone())?;
                    let want: serde_json::Value = serde_json::from_str(want)?;
                    assert_eq!(got.pointer(pointer), Some(&want), "{what}: {text}");
                }
                Expect::Sample(metric, labels, value) => {
                    assert_eq!(sample(&text, metric, labels), Some(*value), "{what}");
                }
            }
        }
        srv.stop().await.with_context(|| name)?;
    }
    Ok(())
}

#[tokio::test]
async fn flaky_readiness_alternates_on_each_connection() -> Result<()> {
    // flakyReadiness fails every other /readyz answer on one kept-alive connection, starting
    // with a pass, so a prober with a failure threshold of 2 never sees two failures in a row;
    // a client opening a new connection per check always sees a pass.
    let (srv, _kit) = start(true, Duration::ZERO).await?;
    let admin = reqwest::Client::new();
    let r = admin
        .post(format!("{}/admin/faults", srv.url()))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"flakyReadiness": true}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let url = format!("{}/readyz", srv.url());
    let kept = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(kept.get(&url).send().await?.status().as_u16());
    }
    assert_eq!(seen, vec![200, 503, 200, 503, 200, 503]);
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    for _ in 0..3 {
        assert_eq!(fresh.get(&url).send().await?.status(), 200);
    }
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn injected_latency_comes_before_the_handler() -> Result<()> {
    // Latency is added before the handler runs. The elapsed time is the behaviour under test;
    // it is checked as a lower bound, so load cannot break it.
    let (srv, _kit) = start(true, Duration::ZERO).await?;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/admin/faults", srv.url()))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"latencyMs": 300}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let t = Instant::now();
    assert_eq!(
        http.get(format!("{}/echo/5", srv.url()))
            .send()
            .await?
            .status(),
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_fails_readiness_then_drains_in_flight() -> Result<()> {
    // On shutdown, readiness turns 503 at once while an in-flight slow request still
    // completes with 200, and the server reports a clean drain.
    // The 8 s shutdown delay is the window in which the /readyz check below must land; it is
    // generous so a loaded machine cannot close the listener first.
    let (mut srv, kit) = start(true, Duration::from_secs(8)).await?;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/admin/faults", srv.url()))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"latencyMs": 1500}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);

    let before = kit.health.traffic().open_connections();
    let slow_url = format!("{}/echo/9", srv.url());
    // A client of its own, so the slow request opens a connection rather than reusing the
    // admin request's.
    let slow = tokio::spawn(async move {
        reqwest::Client::new()
            .get(slow_url)
            .send()
            .await?
            .text()
            .await
    });
    // Wait until the slow request's connection is open. Not an assertion: the server keeps
    // accepting for the shutdown delay anyway, so the request is served whichever comes first.
    let traffic = kit.health.traffic();
    poll(
        "the slow request's connection",
        Duration::from_secs(20),
        || {
            let open = traffic.open_connections() > before;
            async move { Ok(open.then_some(())) }
        },
    )
    .await?;
    srv.trigger_stop();

    poll(
        "readiness to turn to draining",
        Duration::from_secs(20),
        || {
            let draining = kit.health.is_draining();
            async move { Ok(draining.then_some(())) }
        },
    )
    .await?;
    let r = http.get(format!("{}/readyz", srv.url())).send().await?;
    assert_eq!(r.status(), 503);

    let body = slow.await??;
    assert_eq!(body, "echo 9");
    assert_eq!(srv.finished().await?, Stopped::Drained);
    Ok(())
}
