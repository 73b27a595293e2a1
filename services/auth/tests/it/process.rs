//! The `auth` binary as a process: it refuses to start without a signing key, naming
//! JWT_SIGNING_KEY, refuses the HS256 JWT_SECRET of earlier releases, and starts with `--dev`
//! alone, publishing the development key.

use anyhow::Result;
use flotilla_testkit::process::{http_ok, Builder};

/// The `auth` binary with neither its signing key nor the old secret from the test's
/// environment, its users service unreachable.
fn auth() -> Builder {
    Builder::new("auth", env!("CARGO_BIN_EXE_auth"))
        .env_remove("JWT_SECRET")
        .env_remove("JWT_SIGNING_KEY")
        .env("USERS_URL", "http://127.0.0.1:9")
}

#[tokio::test]
async fn refuses_to_start_without_a_signing_key() -> Result<()> {
    // Outside developer mode a missing key is fatal and named.
    let out = auth()
        .env_remove("AUTH_DEV_SECRET")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .run()
        .await?;
    assert!(!out.status.success());
    let stderr = out.log;
    assert!(stderr.contains("JWT_SIGNING_KEY"), "stderr: {stderr}");
    Ok(())
}

#[tokio::test]
async fn refuses_the_old_jwt_secret_naming_its_replacement() -> Result<()> {
    // A manifest still setting JWT_SECRET fails loudly, even with --dev, and says what
    // replaced it.
    let out = Builder::new("auth", env!("CARGO_BIN_EXE_auth"))
        .arg("--dev")
        .env("JWT_SECRET", "Kf8d2LqW9zX4vB7nM1pR6tY3hJ5gC0sA")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .run()
        .await?;
    assert!(!out.status.success());
    let stderr = out.log;
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
    let auth = auth()
        .arg("--dev")
        .listen_env("LISTEN_ADDR")
        .env("SHUTDOWN_DELAY_MS", "0")
        .ready(http_ok("/healthz"))
        .start()
        .await?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    // Nothing listens on the users address, so auth is alive but not ready.
    let r = http.get(format!("{}/readyz", auth.url())).send().await?;
    assert_eq!(r.status(), 503);
    // The JWKS holds the development key, which users --dev trusts.
    let jwks: flotilla_kit::jwt::Jwks = http
        .get(format!("{}/.well-known/jwks.json", auth.url()))
        .send()
        .await?
        .json()
        .await?;
    let dev = flotilla_kit::jwt::parse_public_keys(flotilla_kit::jwt::DEV_PUBLIC_KEY)?;
    assert_eq!(jwks.public_keys()?, dev);
    let exit = auth.terminate().await?;
    assert_eq!(exit.code(), Some(0), "{exit}");
    Ok(())
}
