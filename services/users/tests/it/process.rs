//! The `users` binary as a process: starts with no configuration beyond a listen address,
//! creates its SQLite file in the working directory, serves, and exits 0 on SIGTERM; an
//! invalid variable stops it at start-up with a message naming the variable.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use flotilla_kit::jwt::{Signer, SigningKey};

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
async fn binary_starts_serves_and_stops_cleanly_on_sigterm() -> Result<()> {
    // One command starts the service on a fresh directory, and SIGTERM ends it with code 0.
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let key = SigningKey::generate()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_users"))
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("USERS_DEV")
        .env_remove("AUTH_JWKS_URL")
        .env("JWT_PUBLIC_KEYS", key.public_key().to_pem())
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("SHUTDOWN_DELAY_MS", "0")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("users exited early with {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("users never became ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("users did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0));
    Ok(())
}

#[test]
fn the_old_jwt_secret_is_refused_naming_its_replacement() -> Result<()> {
    // A manifest still setting JWT_SECRET stops users at start-up with an error naming the
    // public keys that replaced it, never echoing the secret.
    let dir = tempfile::tempdir()?;
    let secret = "Kf8d2LqW9zX4vB7nM1pR6tY3hJ5gC0sA";
    let out = Command::new(env!("CARGO_BIN_EXE_users"))
        .current_dir(dir.path())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("JWT_SECRET", secret)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("JWT_PUBLIC_KEYS"), "stderr: {stderr}");
    assert!(!stderr.contains(secret), "stderr: {stderr}");
    Ok(())
}

#[test]
fn invalid_listen_addr_is_named() -> Result<()> {
    // A malformed LISTEN_ADDR stops start-up with an error that names the variable.
    let dir = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_users"))
        .current_dir(dir.path())
        .env("LISTEN_ADDR", "not-an-address")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
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
    let port = free_port()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_users"))
        .current_dir(dir.path())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", data.join("users.db").display()),
        )
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("SHUTDOWN_DELAY_MS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        let body = loop {
            if let Some(status) = child.try_wait()? {
                bail!("users exited with {status} while its database was down");
            }
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                assert_eq!(r.status(), 503, "ready without a database");
                break r.text().await?;
            }
            if Instant::now() > deadline {
                bail!("users never answered");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(body.contains("database"), "{body}");
        assert_eq!(
            http.get(format!("{base}/healthz")).send().await?.status(),
            200
        );
        std::fs::create_dir(&data)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!("users exited with {status}");
            }
            if Instant::now() > deadline {
                bail!("users never became ready after the database came back");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = http
            .post(format!("{base}/users"))
            .json(&serde_json::json!({"name": "Back", "email": "back@example.com", "password": "correct horse"}))
            .send()
            .await?;
        assert_eq!(r.status(), 201);
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
