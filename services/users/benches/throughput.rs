//! Load benchmark: `GET /users/{id}` on loopback as the account owner (so every request verifies
//! a JWT), with and without the metrics wrapper.
//!
//! Both variants serve the same SQLite file from one process; rounds alternate between them
//! so drift in machine load hits both alike. Prints requests/s and p50/p99 latency per
//! variant and the wrapper's throughput cost. The client shares the machine with the server,
//! so absolute figures are a floor; the comparison is what matters.
//!
//! Run: `cargo bench -p users --bench throughput` (about 50 s by default). Tunables:
//! `BENCH_ROUND_SECS` (default 5), `BENCH_ROUNDS` (default 4), `BENCH_CONCURRENCY` (default 16).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_kit::server::{DrainOptions, Running};
use users::{Db, Passwords};

fn env_or(var: &str, default: u64) -> Result<u64> {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{var} must be a whole number")),
        Err(_) => Ok(default),
    }
}

/// Key of the tokens the clients present (users verifies one on every request).
fn key() -> &'static flotilla_kit::jwt::SigningKey {
    static KEY: std::sync::OnceLock<flotilla_kit::jwt::SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| flotilla_kit::jwt::SigningKey::generate().expect("key"))
}

fn tokens() -> flotilla_kit::jwt::Signer {
    let audiences = vec![flotilla_kit::jwt::AUDIENCE_USERS.to_owned()];
    flotilla_kit::jwt::Signer::new(
        key().clone(),
        Vec::new(),
        audiences,
        Duration::from_secs(3600),
    )
}

async fn start(db: Db, metrics: bool) -> Result<Running> {
    let mut service = users::build(db, Passwords::low_cost()?, None, metrics)?;
    service.state.access = Arc::new(users::Access {
        tokens: Some(flotilla_kit::jwt::Verifier::for_audience(
            flotilla_kit::jwt::AUDIENCE_USERS,
            vec![key().public_key().clone()],
        )),
        ..users::Access::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let opts = DrainOptions {
        shutdown_delay: Duration::ZERO,
        drain_timeout: Duration::from_secs(5),
        ..DrainOptions::default()
    };
    Ok(Running::start(
        listener,
        service.filter(),
        service.kit.health.clone(),
        opts,
    )?)
}

/// A client presenting `token` as a bearer token on every request.
fn client(token: &str, idle: usize) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(idle)
        .build()?)
}

/// Drives `concurrency` keep-alive clients against `url` for `secs`, each request with the
/// account owner's `token`; returns latencies.
async fn load(
    url: &str,
    token: &str,
    concurrency: u64,
    secs: u64,
) -> Result<(u64, Vec<Duration>, Duration)> {
    let http = client(token, usize::try_from(concurrency)?)?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, stop) = (http.clone(), url.to_owned(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        if r.bytes().await.is_ok() {
                            lat.push(t.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    _ => errors += 1,
                }
            }
            (errors, lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (e, lat) = t.await?;
        errors += e;
        all.extend(lat);
    }
    Ok((errors, all, started.elapsed()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[derive(Default)]
struct Tally {
    requests: u64,
    elapsed: Duration,
    errors: u64,
    latencies: Vec<Duration>,
    rounds: Vec<f64>,
}

impl Tally {
    fn add(&mut self, (errors, lat, elapsed): (u64, Vec<Duration>, Duration)) {
        self.rounds.push(lat.len() as f64 / elapsed.as_secs_f64());
        self.requests += lat.len() as u64;
        self.elapsed += elapsed;
        self.errors += errors;
        self.latencies.extend(lat);
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&mut self, name: &str) {
        self.latencies.sort_unstable();
        let rounds: Vec<String> = self.rounds.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "{name:<16} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}  rounds [{}]",
            self.rps(),
            percentile(&self.latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&self.latencies, 0.99).as_secs_f64() * 1e3,
            self.errors,
            rounds.join(", ")
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes `--bench`. Anything else (`cargo test --all-targets`, a test
    // runner listing tests with `--list`) must not start a minute-long load run.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(()); // no unit tests in here
    }
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "throughput: load benchmark, run it with `cargo bench -p users --bench throughput`"
        );
        return Ok(());
    }
    let secs = env_or("BENCH_ROUND_SECS", 5)?;
    let rounds = env_or("BENCH_ROUNDS", 4)?;
    let concurrency = env_or("BENCH_CONCURRENCY", 16)?;

    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let db = Db::connect(&url).await?;
    let hash = Passwords::low_cost()?.hash("benchmark".into()).await?;
    let user = db.insert("Bench", "bench@example.com", &hash).await?;

    let with = start(db.clone(), true).await?;
    let without = start(db.clone(), false).await?;
    let with_url = format!("{}/users/{}", with.url(), user.id);
    let without_url = format!("{}/users/{}", without.url(), user.id);
    let (token, _) = tokens().issue(&user.id)?;
    if client(&token, 1)?.get(&with_url).send().await?.status() != 200 {
        bail!("benchmark target not answering");
    }

    println!(
        "GET /users/{{id}} on loopback: {concurrency} connections, {rounds} rounds x {secs} s per variant"
    );
    // Warm-up: connections, SQLite page cache, allocator.
    load(&with_url, &token, concurrency, 1).await?;
    load(&without_url, &token, concurrency, 1).await?;

    let (mut a, mut b) = (Tally::default(), Tally::default());
    for round in 0..rounds {
        // Alternate which variant goes first so ordering effects cancel out.
        if round % 2 == 0 {
            a.add(load(&with_url, &token, concurrency, secs).await?);
            b.add(load(&without_url, &token, concurrency, secs).await?);
        } else {
            b.add(load(&without_url, &token, concurrency, secs).await?);
            a.add(load(&with_url, &token, concurrency, secs).await?);
        }
    }
    a.print("with metrics");
    b.print("without metrics");
    let cost = (1.0 - a.rps() / b.rps()) * 100.0;
    println!("metrics wrapper throughput cost: {cost:.2}% (target < 5%)");

    with.stop().await?;
    without.stop().await?;
    Ok(())
}
