//! User ids survive the database: they are UUIDs, so when a pod's embedded database is
//! recreated, tokens issued before name no account rather than whoever signs up next, and
//! accounts migrated from the row-id schema keep working.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_kit::jwt::{Signer, SigningKey, Verifier, AUDIENCE_USERS};
use flotilla_kit::server::{DrainOptions, Running};
use reqwest::StatusCode;
use serde_json::{json, Value};
use users::{Access, Db, Passwords, SignupLimits};

use crate::support::SERVICE;

/// users on the SQLite file `url`, trusting `key`'s tokens.
async fn start(url: &str, key: &SigningKey) -> Result<Running> {
    let db = Db::connect(url).await?;
    let mut service = users::build(db, Passwords::low_cost()?, None, true)?;
    service.state.signup_limits = SignupLimits::new(0, 0);
    service.state.access = Arc::new(Access {
        tokens: Some(Verifier::for_audience(
            AUDIENCE_USERS,
            vec![key.public_key().clone()],
        )),
        service_token: Some(SERVICE.into()),
        ..Access::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let opts = DrainOptions {
        shutdown_delay: Duration::ZERO,
        ..DrainOptions::default()
    };
    Ok(Running::start(
        listener,
        service.filter(),
        service.kit.health.clone(),
        opts,
    )?)
}

async fn sign_up(http: &reqwest::Client, srv: &Running, name: &str) -> Result<String> {
    let r = http
        .post(format!("{}/users", srv.url()))
        .json(&json!({"name": name, "email": format!("{name}@example.com"), "password": "correct horse"}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == StatusCode::CREATED, "sign-up: {}", r.status());
    let body: Value = r.json().await?;
    Ok(body["id"].as_str().context("id")?.to_owned())
}

#[tokio::test]
async fn a_token_from_before_the_database_was_recreated_opens_no_new_account() -> Result<()> {
    // Ada signs up and gets a token; the pod's database is deleted and recreated; Bob signs
    // up first on the new one. Ada's token reads neither Bob's account nor any other.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("users.db");
    let url = format!("sqlite://{}", file.display());
    let key = SigningKey::generate()?;
    let signer = Signer::new(
        key.clone(),
        Vec::new(),
        vec![AUDIENCE_USERS.into()],
        Duration::from_secs(600),
    );
    let http = reqwest::Client::new();

    let srv = start(&url, &key).await?;
    let ada = sign_up(&http, &srv, "ada").await?;
    let (token, _) = signer.issue(&ada)?;
    srv.stop().await?;
    std::fs::remove_file(&file)?;

    let srv = start(&url, &key).await?;
    let bob = sign_up(&http, &srv, "bob").await?;
    assert_ne!(ada, bob, "a recreated database handed out Ada's id again");
    let get = |id: String| {
        http.get(format!("{}/users/{id}", srv.url()))
            .bearer_auth(&token)
            .send()
    };
    let own = get(ada.clone()).await?;
    assert_eq!(own.status(), StatusCode::NOT_FOUND, "Ada's old id");
    let bobs = get(bob.clone()).await?;
    assert_eq!(bobs.status(), StatusCode::FORBIDDEN, "Bob's account");
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn accounts_from_the_row_id_schema_get_uuids_and_keep_their_passwords() -> Result<()> {
    // A database created by the row-id schema (migration 0001 only) migrates: its accounts
    // get distinct UUIDs and their passwords still verify.
    let dir = tempfile::tempdir()?;
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations)?;
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/sqlite/0001_users.sql"
        ),
        migrations.join("0001_users.sql"),
    )?;
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let pool = flotilla_kit::db::pool(&url)?;
    sqlx::migrate::Migrator::new(migrations.as_path())
        .await?
        .run(&pool)
        .await?;
    let hash = Passwords::low_cost()?.hash("correct horse".into()).await?;
    for (name, email) in [
        ("Old One", "one@example.com"),
        ("Old Two", "two@example.com"),
    ] {
        sqlx::query(
            "INSERT INTO users (name, email, password_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, 0, 0)",
        )
        .bind(name)
        .bind(email)
        .bind(&hash)
        .execute(&pool)
        .await?;
    }
    pool.close().await;

    let key = SigningKey::generate()?;
    let srv = start(&url, &key).await?;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for email in ["one@example.com", "two@example.com"] {
        let r = http
            .post(format!("{}/users/verify", srv.url()))
            .bearer_auth(SERVICE)
            .json(&json!({"email": email, "password": "correct horse"}))
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::OK, "{email}");
        let body: Value = r.json().await?;
        let id = body["id"].as_str().context("id")?.to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    srv.stop().await?;
    Ok(())
}
