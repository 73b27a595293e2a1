//! A sign-up flood against users, with real Argon2 cost and the default hashing slots, while
//! auth's credential checks keep arriving: the checks must keep succeeding (otherwise every
//! login fails and auth's circuit breaker opens).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use flotilla_kit::ratelimit::CredentialLimits;
use flotilla_kit::server::{DrainOptions, Running};
use flotilla_testkit::wait::poll;
use reqwest::StatusCode;
use serde_json::json;
use users::{Access, Db, Passwords};

use crate::support::SERVICE;

/// Clients signing up at once.
const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_checks_succeed_during_a_signup_flood() -> Result<()> {
    // Eight clients sign up as fast as users answers while auth checks one account's
    // password twenty times: every check answers 200, none 503 busy.
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let db = Db::connect(&url).await?;
    let mut service = users::build(db, Passwords::new()?, None, true)?;
    service.state.limits = CredentialLimits::new(0, 0);
    service.state.access = Arc::new(Access {
        service_token: Some(SERVICE.into()),
        ..Access::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let opts = DrainOptions {
        shutdown_delay: Duration::ZERO,
        ..DrainOptions::default()
    };
    let srv = Running::start(listener, service.filter(), service.kit.health.clone(), opts)?;
    let http = reqwest::Client::new();
    let signups = format!("{}/users", srv.url());
    let r = http
        .post(&signups)
        .json(&json!({"name": "Steady", "email": "steady@example.com", "password": "keep-going!"}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::CREATED);

    let stop = Arc::new(AtomicBool::new(false));
    let flood: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (stop, url, http) = (stop.clone(), signups.clone(), http.clone());
            tokio::spawn(async move {
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    let body = json!({
                        "name": "Flood",
                        "email": format!("flood-{client}-{sent}@example.com"),
                        "password": "flood-password",
                    });
                    let _ = http.post(&url).json(&body).send().await;
                }
                sent
            })
        })
        .collect();
    // Let the flood take hold before checking: every client has a sign-up on a connection
    // of its own at the server.
    let traffic = service.kit.health.traffic();
    poll(
        "every flood client to be connected",
        Duration::from_secs(30),
        || {
            let open = traffic.open_connections();
            async move { Ok((open >= CLIENTS).then_some(())) }
        },
    )
    .await?;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = http
            .post(format!("{}/users/verify", srv.url()))
            .bearer_auth(SERVICE)
            .json(&json!({"email": "steady@example.com", "password": "keep-going!"}))
            .send()
            .await?;
        statuses.push(r.status());
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for client in flood {
        sent += client.await?;
    }
    assert!(sent > 20, "the flood sent only {sent} sign-ups");
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "credential checks during the flood: {statuses:?}"
    );
    srv.stop().await?;
    Ok(())
}
