//! The `auth` binary as a process: it refuses to start without a signing key, naming
//! JWT_SIGNING_KEY, refuses the HS256 JWT_SECRET of earlier releases, and starts with `--dev`
//! alone, publishing the development key.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

#[test]
fn refuses_to_start_without_a_signing_key() -> Result<()> {
    // Outside developer mode a missing key is fatal and named.
    let out = Command::new(env!("CARGO_BIN_EXE_auth"))
        .env_remove("JWT_SECRET")
        .env_remove("JWT_SIGNING_KEY")
        .env_remove("AUTH_DEV_SECRET")
        .env("USERS_URL", "http://127.0.0.1:9")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("JWT_SIGNING_KEY"), "stderr: {stderr}");
    Ok(())
}

#[test]
fn refuses_the_old_jwt_secret_naming_its_replacement() -> Result<()> {
    // A manifest still setting JWT_SECRET fails loudly, even with --dev, and says what
    // replaced it.
    let out = Command::new(env!("CARGO_BIN_EXE_auth"))
        .arg("--dev")
        .env("JWT_SECRET", "Kf8d2LqW9zX4vB7nM1pR6tY3hJ5gC0sA")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("JWT_SIGNING_KEY"), "stderr: {stderr}");
    assert!(
        !stderr.contains("Kf8d2LqW9zX4vB7nM1pR6tY3hJ5gC0sA"),
        "stderr: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn starts_with_dev_flag_and_stops_on_sigterm() -> Result<()> {
    // `auth --dev` serves liveness with no other configuration and exits 0 on SIGTERM.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth"))
        .arg("--dev")
        .env_remove("JWT_SECRET")
        .env_remove("JWT_SIGNING_KEY")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("USERS_URL", "http://127.0.0.1:9")
        .env("SHUTDOWN_DELAY_MS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            if r.status() == 200 {
                break;
            }
        }
        if let Some(s) = child.try_wait()? {
            bail!("auth exited early with {s}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("auth never answered /healthz");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing listens on the users address, so auth is alive but not ready.
    let r = http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    // The JWKS holds the development key, which users --dev trusts.
    let jwks: flotilla_kit::jwt::Jwks = http
        .get(format!("http://127.0.0.1:{port}/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    let dev = flotilla_kit::jwt::parse_public_keys(flotilla_kit::jwt::DEV_PUBLIC_KEY)?;
    assert_eq!(jwks.public_keys()?, dev);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("auth did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0));
    Ok(())
}
