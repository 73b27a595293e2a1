//! The readiness watch over a real connection: each change is on the wire as it happens, with
//! heartbeats when asked, each line carrying the API request counts, and the stream ends when
//! the instance drains.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_kit::readiness_watch::{ERRORS_HEADER, WATCH_HEADER};
use flotilla_kit::server::{DrainOptions, Running};
use flotilla_kit::{FaultConfig, Health, Kit};
use tokio::net::TcpListener;
use warp::Filter;

/// A line as the watch sends it before any API request.
const READY: &str = "ready requests=0 errors=0";

/// Bound on each wait for a line: far under the watch's 30 s lifetime, so a line that comes
/// only because the response ended (and not because of the change) fails the test.
const LINE_WITHIN: Duration = Duration::from_secs(10);

async fn start() -> Result<(Running, Kit)> {
    let kit = Kit::new(Health::builder().build(), None)?;
    let api = warp::path!("api").map(|| flotilla_kit::tag("/api", "ok"));
    let fail = warp::path!("fail").map(|| {
        let status = warp::http::StatusCode::INTERNAL_SERVER_ERROR;
        flotilla_kit::tag("/fail", warp::reply::with_status("failed", status))
    });
    let filter = kit.filter(api.or(fail).unify());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let opts = DrainOptions {
        shutdown_delay: Duration::ZERO,
        drain_timeout: Duration::from_secs(30),
        ..DrainOptions::default()
    };
    let running = Running::start(listener, filter, kit.health.clone(), opts)?;
    Ok((running, kit))
}

/// The lines of one watch response, read as they arrive.
struct Lines {
    resp: reqwest::Response,
    pending: String,
}

impl Lines {
    async fn open(url: &str, header: &str) -> Result<(u16, Option<String>, Lines)> {
        Self::open_with(url, &[(WATCH_HEADER, header)]).await
    }

    async fn open_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Option<String>, Lines)> {
        let mut req = reqwest::Client::new().get(format!("{url}/readyz"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().await?;
        let echoed = resp
            .headers()
            .get(WATCH_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((
            resp.status().as_u16(),
            echoed,
            Lines {
                resp,
                pending: String::new(),
            },
        ))
    }

    /// The next line, `None` once the response ended.
    async fn next(&mut self) -> Result<Option<String>> {
        self.next_within(LINE_WITHIN)
            .await?
            .context("no line within the bound")
    }

    /// The next line (`None` once the response ended), or `None` outside when none came
    /// `within`.
    async fn next_within(&mut self, within: Duration) -> Result<Option<Option<String>>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.pending.find('\n') {
                let line = self.pending[..i].to_owned();
                self.pending.drain(..=i);
                return Ok(Some(Some(line)));
            }
            let Ok(chunk) = tokio::time::timeout_at(deadline, self.resp.chunk()).await else {
                return Ok(None);
            };
            match chunk? {
                Some(c) => self.pending.push_str(std::str::from_utf8(&c)?),
                None if self.pending.is_empty() => return Ok(Some(None)),
                None => bail!("the response ended inside a line: {:?}", self.pending),
            }
        }
    }
}

#[tokio::test]
async fn a_watch_reports_each_readiness_change_as_it_happens() -> Result<()> {
    // The pod knows it is failing (here a fault; a dependency check works the same way) and
    // says so on the open request, without a new probe; recovery too. Draining for shutdown
    // is reported and ends the response, so it cannot hold the shutdown up.
    let (srv, kit) = start().await?;
    let (status, echoed, mut lines) = Lines::open(&srv.url(), "heartbeat=0").await?;
    assert_eq!(status, 200);
    assert_eq!(echoed.as_deref(), Some("heartbeat=0"));
    assert_eq!(lines.next().await?.as_deref(), Some(READY));
    kit.faults
        .set(FaultConfig {
            unhealthy: true,
            ..FaultConfig::default()
        })
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        lines.next().await?.as_deref(),
        Some("not_ready faults requests=0 errors=0")
    );
    kit.faults.clear();
    assert_eq!(lines.next().await?.as_deref(), Some(READY));
    let stopping = tokio::spawn(srv.stop());
    assert_eq!(
        lines.next().await?.as_deref(),
        Some("not_ready shutdown requests=0 errors=0")
    );
    assert_eq!(lines.next().await?, None, "draining ends the response");
    stopping.await??;
    Ok(())
}

#[tokio::test]
async fn heartbeats_repeat_the_state_and_other_requests_get_ordinary_probes() -> Result<()> {
    // Asked for heartbeats, the pod repeats its line, which lets a prober tell a silent
    // (hung) pod from a steady one. Without the header, with a malformed one, or with the
    // per-answer `flakyReadiness` fault, `/readyz` answers as an ordinary probe.
    let (srv, kit) = start().await?;
    let (status, echoed, mut lines) = Lines::open(&srv.url(), "heartbeat=20").await?;
    assert_eq!((status, echoed.as_deref()), (200, Some("heartbeat=50")));
    for _ in 0..3 {
        assert_eq!(lines.next().await?.as_deref(), Some(READY));
    }
    drop(lines);
    let http = reqwest::Client::new();
    let plain = http.get(format!("{}/readyz", srv.url())).send().await?;
    assert!(plain.headers().get(WATCH_HEADER).is_none());
    assert_eq!(plain.json::<serde_json::Value>().await?["status"], "ready");
    let malformed = http
        .get(format!("{}/readyz", srv.url()))
        .header(WATCH_HEADER, "every=1")
        .send()
        .await?;
    assert!(malformed.headers().get(WATCH_HEADER).is_none());
    kit.faults
        .set(FaultConfig {
            flaky_readiness: true,
            ..FaultConfig::default()
        })
        .map_err(anyhow::Error::msg)?;
    let (_, echoed, _) = Lines::open(&srv.url(), "heartbeat=0").await?;
    assert_eq!(echoed, None, "a flaky pod answers each request on its own");
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn heartbeat_lines_carry_the_api_request_and_5xx_counts() -> Result<()> {
    // Each line says how many API requests the instance answered so far and how many of them
    // were 5xx, so the prober judges the error ratio at every heartbeat. The watch's own and
    // the other health, metrics and admin requests are not counted.
    let (srv, _kit) = start().await?;
    let (_, _, mut lines) = Lines::open(&srv.url(), "heartbeat=50").await?;
    assert_eq!(lines.next().await?.as_deref(), Some(READY));
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", srv.url())).send();
    for _ in 0..3 {
        assert_eq!(get("/api").await?.status(), 200);
    }
    get("/metrics").await?;
    get("/readyz").await?;
    get("/healthz").await?;
    for _ in 0..2 {
        assert_eq!(get("/fail").await?.status(), 500);
    }
    // The next heartbeat after the last request carries all of them.
    loop {
        let line = lines.next().await?.context("the watch ended")?;
        if line == "ready requests=5 errors=2" {
            break;
        }
        let counted = line.strip_prefix("ready requests=").context(line.clone())?;
        anyhow::ensure!(
            ["0 ", "1 ", "2 ", "3 ", "4 "]
                .iter()
                .any(|n| counted.starts_with(n)),
            "only API requests count: {line}"
        );
    }
    srv.stop().await?;
    Ok(())
}

/// Requests of one step: a path and how many times in a row.
type Calls = &'static [(&'static str, usize)];

#[tokio::test]
async fn failing_requests_are_reported_without_waiting_for_the_heartbeat() -> Result<()> {
    // Asked with the errors header, the pod marks where its failures start (a line at the first
    // failed request after a clean stretch of at least `requests`) and sends a line as soon as
    // `requests` more were answered with more than `above` of them failed, long before its
    // 10 s heartbeat. Errors under the ratio send nothing early, and a watch that did not ask
    // gets its lines at the heartbeat only.
    let (srv, _kit) = start().await?;
    let url = srv.url();
    let watch = [
        (WATCH_HEADER, "heartbeat=10000"),
        (ERRORS_HEADER, "above=0.5 requests=10"),
    ];
    let (_, _, mut early) = Lines::open_with(&url, &watch).await?;
    let (_, _, mut plain) = Lines::open(&url, "heartbeat=10000").await?;
    for lines in [&mut early, &mut plain] {
        assert_eq!(lines.next().await?.as_deref(), Some(READY));
    }
    let http = reqwest::Client::new();
    let call = |path: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move { anyhow::Ok(http.get(format!("{url}{path}")).send().await?.status()) }
    };
    // Well under a heartbeat: a line within it came early.
    let (soon, quiet) = (Duration::from_secs(3), Duration::from_millis(500));
    // The requests of each step, and the early line that must follow them (or none).
    let steps: [(Calls, Option<&str>, &str); 5] = [
        (&[("/api", 10)], None, "successful requests send nothing early"),
        (
            &[("/fail", 1)],
            Some("ready requests=11 errors=1"),
            "the first failure after ten successful requests",
        ),
        (&[("/fail", 9)], None, "nine requests are short of a stretch"),
        (
            &[("/fail", 1)],
            Some("ready requests=21 errors=11"),
            "ten failed requests in a row",
        ),
        (
            &[("/api", 10), ("/fail", 1)],
            None,
            "one failure in eleven is under the ratio, and this heartbeat had its first-failure line",
        ),
    ];
    for (calls, expected, why) in steps {
        for &(path, n) in calls {
            let status = if path == "/fail" { 500 } else { 200 };
            for _ in 0..n {
                assert_eq!(call(path).await?, status);
            }
        }
        let within = if expected.is_some() { soon } else { quiet };
        let line = early.next_within(within).await?.flatten();
        assert_eq!(line.as_deref(), expected, "{why}");
    }
    assert_eq!(
        plain.next_within(Duration::from_millis(100)).await?,
        None,
        "no early lines unasked"
    );
    srv.stop().await?;
    Ok(())
}
