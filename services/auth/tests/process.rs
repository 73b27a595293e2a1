//! The `auth` binary as a process: it refuses to start without a signing secret, naming
//! JWT_SECRET, and starts with `--dev` alone.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

#[test]
fn refuses_to_start_without_jwt_secret() -> Result<()> {
    // Outside developer mode a missing secret is fatal and named.
    let out = Command::new(env!("CARGO_BIN_EXE_auth"))
        .env_remove("JWT_SECRET")
        .env_remove("AUTH_DEV_SECRET")
        .env("USERS_URL", "http://127.0.0.1:9")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("JWT_SECRET"), "stderr: {stderr}");
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
