//! The users API over real HTTP on loopback with a real SQLite file: CRUD, validation and
//! conflict errors, credential checks, readiness following the database, metrics labels.
//! With `TEST_POSTGRES_URL` set, the CRUD round trip also runs against PostgreSQL.

use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_kit::jwt::{Signer, SigningKey, Verifier, AUDIENCE_USERS};
use flotilla_kit::server::{DrainOptions, Running};
use reqwest::StatusCode;
use serde_json::{json, Value};
use users::{Access, Db, Passwords, SignupLimits};

use crate::support::SERVICE;

/// An id no account has.
const NOBODY: &str = "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c";

/// auth's signing key; users holds its public half.
fn key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("key"))
}

fn access() -> std::sync::Arc<Access> {
    std::sync::Arc::new(Access {
        tokens: Some(Verifier::for_audience(
            AUDIENCE_USERS,
            vec![key().public_key().clone()],
        )),
        service_token: Some(SERVICE.into()),
        ..Access::default()
    })
}

/// An admin's token: these tests exercise the API itself; `access.rs` covers who may call it.
fn admin_token() -> Result<String> {
    let tokens = Signer::new(
        key().clone(),
        Vec::new(),
        vec![AUDIENCE_USERS.into()],
        Duration::from_secs(600),
    );
    Ok(tokens.issue_as(NOBODY, flotilla_kit::jwt::Role::Admin)?.0)
}

struct TestService {
    srv: Running,
    db: Db,
    http: reqwest::Client,
    admin: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestService {
    async fn sqlite() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("users.db").display());
        let mut t = Self::on(&url).await?;
        t._dir = Some(dir);
        Ok(t)
    }

    async fn on(url: &str) -> Result<Self> {
        let db = Db::connect(url).await?;
        let mut service = users::build(db.clone(), Passwords::low_cost()?, None, true)?;
        service.state.access = access();
        // The tests create many accounts from one address; `signup_is_rate_limited` covers
        // the limits.
        service.state.signup_limits = SignupLimits::new(0, 0);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let opts = DrainOptions {
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(10),
            ..DrainOptions::default()
        };
        let srv = Running::start(listener, service.filter(), service.kit.health.clone(), opts)?;
        Ok(Self {
            srv,
            db,
            http: reqwest::Client::new(),
            admin: admin_token()?,
            _dir: None,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.srv.url())
    }

    /// The service credential for the credential check, an admin's token elsewhere.
    fn auth_for(&self, path: &str) -> &str {
        if path.starts_with("/users/verify") {
            SERVICE
        } else {
            &self.admin
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<(StatusCode, Value)> {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(self.auth_for(path))
            .json(&body)
            .send()
            .await?;
        Ok((r.status(), r.json().await.unwrap_or(Value::Null)))
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(self.auth_for(path))
            .send()
            .await?;
        Ok((r.status(), r.json().await.unwrap_or(Value::Null)))
    }

    async fn put(&self, path: &str, body: Value) -> Result<(StatusCode, Value)> {
        let r = self
            .http
            .put(self.url(path))
            .bearer_auth(self.auth_for(path))
            .json(&body)
            .send()
            .await?;
        Ok((r.status(), r.json().await.unwrap_or(Value::Null)))
    }
}

fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Create, read, list, update, delete, and the error each step can produce.
async fn crud_round_trip(t: &TestService) -> Result<()> {
    let email = unique_email("Ada");
    let (status, created) = t
        .post(
            "/users",
            json!({"name": " Ada ", "email": email, "password": "correct horse"}),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().context("id")?.to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    assert_eq!(created["name"], "Ada");
    assert_eq!(created["email"], email.to_lowercase());
    assert!(created.get("password").is_none() && created.get("passwordHash").is_none());
    assert!(!created.to_string().contains("argon2"));

    let (status, got) = t.get(&format!("/users/{id}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, created);

    // Duplicate email, in any case, is a conflict.
    let (status, body) = t
        .post(
            "/users",
            json!({"name": "Other", "email": email.to_uppercase(), "password": "12345678"}),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "email_taken");

    let (status, page) = t.get("/users?limit=500&offset=0").await?;
    assert_eq!(status, StatusCode::OK);
    let items = page["items"].as_array().context("items")?;
    assert!(items.iter().any(|u| u["id"] == id));

    // Taking another user's email on update is a conflict too.
    let other = unique_email("other");
    let (status, created_other) = t
        .post(
            "/users",
            json!({"name": "Other", "email": other, "password": "12345678"}),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    let other_id = created_other["id"].as_str().context("other id")?.to_owned();
    let (status, body) = t
        .put(&format!("/users/{id}"), json!({"email": other}))
        .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("email_taken"))
    );
    // Leave a shared (PostgreSQL) database as it was found.
    let r = t
        .http
        .delete(t.url(&format!("/users/{other_id}")))
        .bearer_auth(&t.admin)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let (status, updated) = t
        .put(
            &format!("/users/{id}"),
            json!({"name": "Ada Lovelace", "password": "new password"}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "Ada Lovelace");
    assert_eq!(updated["email"], email.to_lowercase());

    // The new password verifies, the old one no longer does.
    let (status, v) = t
        .post(
            "/users/verify",
            json!({"email": email, "password": "new password"}),
        )
        .await?;
    assert_eq!(
        (status, v["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let (status, _) = t
        .post(
            "/users/verify",
            json!({"email": email, "password": "correct horse"}),
        )
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let r = t
        .http
        .delete(t.url(&format!("/users/{id}")))
        .bearer_auth(&t.admin)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, body) = t.get(&format!("/users/{id}")).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    let r = t
        .http
        .delete(t.url(&format!("/users/{id}")))
        .bearer_auth(&t.admin)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (status, _) = t
        .put(&format!("/users/{id}"), json!({"name": "Ghost"}))
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn crud_on_sqlite() -> Result<()> {
    // The full lifecycle of a user works on the embedded SQLite backend.
    let t = TestService::sqlite().await?;
    crud_round_trip(&t).await?;
    t.srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn crud_on_postgres_when_configured() -> Result<()> {
    // The same queries work on PostgreSQL. The test command starts a server and sets
    // TEST_POSTGRES_URL and FLOTILLA_REQUIRE_POSTGRES, so there a missing server is a failure;
    // a plain `cargo test` without a server skips this round trip and says so.
    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        anyhow::ensure!(
            std::env::var_os("FLOTILLA_REQUIRE_POSTGRES").is_none(),
            "FLOTILLA_REQUIRE_POSTGRES is set but TEST_POSTGRES_URL is not"
        );
        eprintln!("TEST_POSTGRES_URL not set: PostgreSQL round trip skipped");
        return Ok(());
    };
    // A database of its own: other services migrate theirs on the same server.
    let url = flotilla_testkit::postgres::fresh_database(&url).await?;
    let t = TestService::on(&url).await?;
    crud_round_trip(&t).await?;
    t.srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn invalid_input_is_a_json_400() -> Result<()> {
    // Malformed JSON, unknown fields, bad email, short password and bad paging are 400s
    // with an error code; nothing is stored.
    let t = TestService::sqlite().await?;
    let cases = [
        json!({"name": "A", "email": "not-an-email", "password": "12345678"}),
        json!({"name": "A", "email": "a@example.com", "password": "short"}),
        json!({"name": "", "email": "a@example.com", "password": "12345678"}),
        json!({"name": "A", "email": "a@example.com", "password": "12345678", "role": "admin"}),
        json!({"name": "A", "email": "a@example.com"}),
    ];
    for body in cases {
        let (status, resp) = t.post("/users", body.clone()).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} gave {resp}");
        assert_eq!(resp["error"], "invalid_input");
    }
    let r = t
        .http
        .post(t.url("/users"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for q in [
        "/users?limit=0",
        "/users?limit=x",
        "/users?offset=-3",
        "/users?page=2",
    ] {
        let (status, _) = t.get(q).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
    }
    let (status, _) = t.put(&format!("/users/{NOBODY}"), json!({})).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, page) = t.get("/users").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"], json!([]));
    // Oversized bodies are refused before parsing.
    let big = "x".repeat(20 * 1024);
    let (status, _) = t
        .post(
            "/users",
            json!({"name": big, "email": "a@example.com", "password": "12345678"}),
        )
        .await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let text = t.http.get(t.url("/metrics")).send().await?.text().await?;
    let line = r#"http_requests_total{method="POST",route="/users",status="413"} 1"#;
    assert!(
        text.lines().any(|l| l == line),
        "413 not counted under its route"
    );
    t.srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn verify_refuses_unknown_and_wrong() -> Result<()> {
    // Unknown emails and wrong passwords get the same 401.
    let t = TestService::sqlite().await?;
    let email = unique_email("bob");
    let (status, _) = t
        .post(
            "/users",
            json!({"name": "Bob", "email": email, "password": "hunter22"}),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    let (s1, b1) = t
        .post(
            "/users/verify",
            json!({"email": "nobody@example.com", "password": "hunter22"}),
        )
        .await?;
    let (s2, b2) = t
        .post(
            "/users/verify",
            json!({"email": email, "password": "hunter23"}),
        )
        .await?;
    assert_eq!(
        (s1, s2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(b1, b2);
    t.srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn readiness_follows_the_database() -> Result<()> {
    // /readyz is 200 while the database answers and 503 naming "database" once it is gone;
    // liveness stays 200 and API calls fail fast with 503.
    let t = TestService::sqlite().await?;
    let (status, _) = t.get("/readyz").await?;
    assert_eq!(status, StatusCode::OK);
    t.db.close().await;
    let (status, report) = t.get("/readyz").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(report["failing"][0]["check"], "database");
    let (status, _) = t.get("/healthz").await?;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = t.get(&format!("/users/{NOBODY}")).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "database_unavailable");
    t.srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn metrics_use_route_templates() -> Result<()> {
    // Requests for different ids share the /users/{id} series.
    let t = TestService::sqlite().await?;
    for id in [NOBODY, "1", "not-an-id"] {
        let (status, _) = t.get(&format!("/users/{id}")).await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let text = t.http.get(t.url("/metrics")).send().await?.text().await?;
    let line = r#"http_requests_total{method="GET",route="/users/{id}",status="404"} 3"#;
    assert!(text.lines().any(|l| l == line), "missing {line}");
    assert!(!text.contains("route=\"/users/1\""));
    t.srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_tables_for_every_request() -> Result<()> {
    // With sqlite::memory: every request sees the same database: no "no such table" 500s
    // from pooled connections that opened empty databases of their own.
    let t = TestService::on("sqlite::memory:").await?;
    let (status, body) = t
        .post(
            "/users",
            json!({"name": "Mem", "email": "mem@example.com", "password": "correct horse"}),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for _ in 0..20 {
        let (status, body) = t.get("/users").await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["items"].as_array().map(Vec::len), Some(1), "{body}");
        assert_eq!(t.get("/readyz").await?.0, StatusCode::OK);
    }
    Ok(())
}

#[tokio::test]
async fn readiness_needs_the_schema_not_just_a_connection() -> Result<()> {
    // A database that opens but has no users table is not ready.
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("empty.db").display());
    let db = Db::open(&url)?;
    assert!(
        db.ping().await.is_err(),
        "not migrated yet must not be ready"
    );
    db.migrate().await?;
    assert_eq!(db.ping().await, Ok(()));
    Ok(())
}

#[tokio::test]
async fn credential_checks_are_rate_limited_per_account() -> Result<()> {
    // Past the per-account limit the credential check answers 429 with Retry-After, even for
    // the right password, so guessing through users directly is as slow as through auth.
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let db = Db::connect(&url).await?;
    let mut service = users::build(db, Passwords::low_cost()?, None, true)?;
    service.state.limits = flotilla_kit::ratelimit::CredentialLimits::new(2, 0);
    service.state.access = access();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let srv = Running::start(
        listener,
        service.filter(),
        service.kit.health.clone(),
        DrainOptions::default(),
    )?;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/users", srv.url()))
        .json(&json!({"name": "Lim", "email": "lim@example.com", "password": "correct horse"}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::CREATED);
    let check = |password: &'static str| {
        http.post(format!("{}/users/verify", srv.url()))
            .bearer_auth(SERVICE)
            .json(&json!({"email": "lim@example.com", "password": password}))
            .send()
    };
    assert_eq!(check("wrong one").await?.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(check("wrong two").await?.status(), StatusCode::UNAUTHORIZED);
    let r = check("correct horse").await?;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "rate_limited");
    srv.stop().await?;
    Ok(())
}

#[tokio::test]
async fn signup_is_rate_limited_per_address_and_globally() -> Result<()> {
    // Past the per-address limit sign-up answers 429 rate_limited with Retry-After before
    // parsing or hashing anything, so a flood from one client costs users no Argon2.
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let db = Db::connect(&url).await?;
    let mut service = users::build(db, Passwords::low_cost()?, None, true)?;
    service.state.access = access();
    service.state.signup_limits = SignupLimits::new(2, 100);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let srv = Running::start(
        listener,
        service.filter(),
        service.kit.health.clone(),
        DrainOptions::default(),
    )?;
    let http = reqwest::Client::new();
    let signup = |n: u32| {
        http.post(format!("{}/users", srv.url()))
            .json(&json!({"name": "S", "email": format!("s{n}@example.com"), "password": "correct horse"}))
            .send()
    };
    assert_eq!(signup(1).await?.status(), StatusCode::CREATED);
    assert_eq!(signup(2).await?.status(), StatusCode::CREATED);
    let r = signup(3).await?;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "rate_limited");
    srv.stop().await?;
    Ok(())
}
