//! The `users` binary as a process: starts with no configuration beyond a listen address,
//! creates its SQLite file in the working directory, serves, and exits 0 on SIGTERM; an
//! invalid variable stops it at start-up with a message naming the variable.

use std::time::Duration;

use anyhow::Result;
use flotilla_testkit::process::{http_ok, Builder};

use flotilla_kit::jwt::{Signer, SigningKey};

/// The `users` binary with no configuration of its own (no database URL, no developer mode, no
/// JWKS URL), listening on a free loopback port.
fn users() -> Builder {
    Builder::new("users", env!("CARGO_BIN_EXE_users"))
        .env_remove("DATABASE_URL")
        .env_remove("USERS_DEV")
        .env_remove("AUTH_JWKS_URL")
        .listen_env("LISTEN_ADDR")
        .env("SHUTDOWN_DELAY_MS", "0")
}

#[tokio::test]
async fn binary_starts_serves_and_stops_cleanly_on_sigterm() -> Result<()> {
    // One command starts the service on a fresh directory, and SIGTERM ends it with code 0.
    let dir = tempfile::tempdir()?;
    let key = SigningKey::generate()?;
    let users = users()
        .current_dir(dir.path())
        .env("JWT_PUBLIC_KEYS", key.public_key().to_pem())
        .env("LOG_FORMAT", "json")
        .start()
        .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = users.url();
    assert!(
        dir.path().join("users.db").exists(),
        "database file not created"
    );
    // The binary reads JWT_PUBLIC_KEYS: an admin's token lists users, no token gets 401.
    let signer = Signer::new(
        key,
        Vec::new(),
        vec!["users".into()],
        Duration::from_secs(60),
    );
    let (admin, _) = signer.issue_as(
        "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c",
        flotilla_kit::jwt::Role::Admin,
    )?;
    let r = http
        .get(format!("{base}/users"))
        .bearer_auth(admin)
        .header("x-request-id", "proc-1")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "proc-1");
    let r = http.get(format!("{base}/users")).send().await?;
    assert_eq!(r.status(), 401);

    let exit = users.terminate().await?;
    assert_eq!(exit.code(), Some(0), "{exit}");
    Ok(())
}

#[tokio::test]
async fn the_old_jwt_secret_is_refused_naming_its_replacement() -> Result<()> {
    // A manifest still setting JWT_SECRET stops users at start-up with an error naming the
    // public keys that replaced it, never echoing the secret.
    let dir = tempfile::tempdir()?;
    let secret = "Kf8d2LqW9zX4vB7nM1pR6tY3hJ5gC0sA";
    let out = Builder::new("users", env!("CARGO_BIN_EXE_users"))
        .current_dir(dir.path())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("JWT_SECRET", secret)
        .run()
        .await?;
    assert!(!out.status.success());
    let stderr = out.log;
    assert!(stderr.contains("JWT_PUBLIC_KEYS"), "stderr: {stderr}");
    assert!(!stderr.contains(secret), "stderr: {stderr}");
    Ok(())
}

#[tokio::test]
async fn invalid_listen_addr_is_named() -> Result<()> {
    // A malformed LISTEN_ADDR stops start-up with an error that names the variable.
    let dir = tempfile::tempdir()?;
    let out = Builder::new("users", env!("CARGO_BIN_EXE_users"))
        .current_dir(dir.path())
        .env("LISTEN_ADDR", "not-an-address")
        .run()
        .await?;
    assert!(!out.status.success());
    let stderr = out.log;
    assert!(stderr.contains("LISTEN_ADDR"), "stderr: {stderr}");
    Ok(())
}

#[tokio::test]
async fn starts_not_ready_while_the_database_is_down_and_recovers() -> Result<()> {
    // With its database unreachable (a SQLite file in a directory that does not exist yet)
    // users keeps running, live but not ready, naming the database; once the database can be
    // opened it migrates and turns ready without a restart.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut users = users()
        .current_dir(dir.path())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", data.join("users.db").display()),
        )
        .ready(http_ok("/healthz"))
        .start()
        .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = users.url();
    let r = http.get(format!("{base}/readyz")).send().await?;
    assert_eq!(r.status(), 503, "ready without a database");
    let body = r.text().await?;
    assert!(body.contains("database"), "{body}");
    std::fs::create_dir(&data)?;
    users
        .wait_until("ready after the database came back", &http_ok("/readyz"))
        .await?;
    let r = http
        .post(format!("{base}/users"))
        .json(&serde_json::json!({"name": "Back", "email": "back@example.com", "password": "correct horse"}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    Ok(())
}
