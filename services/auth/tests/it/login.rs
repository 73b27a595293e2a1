//! auth and users together over real HTTP on loopback: login round trip, token checks,
//! readiness following users, and the circuit breaker opening and closing.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use auth::breaker::BreakerConfig;
use auth::{ClientConfig, Signer, Verifier};
use flotilla_kit::jwt::{SigningKey, AUDIENCE_USERS};
use flotilla_kit::ratelimit::CredentialLimits;
use flotilla_kit::server::{DrainOptions, Running};
use flotilla_testkit::http::metric_value;
use flotilla_testkit::wait::poll;
use reqwest::StatusCode;
use serde_json::{json, Value};
use warp::Filter;

use crate::support::{key, signer, SERVICE};

const ADMIN: &str = "users-admin";
/// A user id (UUID) for tokens made outside a login.
const UID: &str = "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c";

/// users' credentials: auth's public key, auth's service credential.
fn users_access() -> users::Access {
    users::Access {
        tokens: Some(Verifier::for_audience(
            AUDIENCE_USERS,
            vec![key().public_key().clone()],
        )),
        service_token: Some(SERVICE.into()),
        ..users::Access::default()
    }
}

fn opts() -> DrainOptions {
    DrainOptions {
        shutdown_delay: Duration::ZERO,
        drain_timeout: Duration::from_secs(10),
        ..DrainOptions::default()
    }
}

struct Pair {
    users: Option<Running>,
    auth: Running,
    client: auth::UsersClient,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start(breaker: BreakerConfig) -> Result<Self> {
        Self::start_with_timeout(breaker, Duration::from_secs(5)).await
    }

    async fn start_with_timeout(breaker: BreakerConfig, timeout: Duration) -> Result<Self> {
        Self::start_full(breaker, timeout, CredentialLimits::new(0, 0)).await
    }

    /// Both services; users' own limits are off so auth's are the ones under test.
    async fn start_full(
        breaker: BreakerConfig,
        timeout: Duration,
        login_limits: CredentialLimits,
    ) -> Result<Self> {
        Self::start_with_users(
            breaker,
            timeout,
            login_limits,
            users::Passwords::low_cost()?,
            users::SignupLimits::new(0, 0),
        )
        .await
    }

    /// Both services, users hashing with `passwords` and limiting sign-ups to `signup_limits`.
    async fn start_with_users(
        breaker: BreakerConfig,
        timeout: Duration,
        login_limits: CredentialLimits,
        passwords: users::Passwords,
        signup_limits: users::SignupLimits,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("users.db").display());
        let db = users::Db::connect(&url).await?;
        let mut svc = users::build(db, passwords, Some(ADMIN.into()), true)?;
        svc.state.limits = CredentialLimits::new(0, 0);
        svc.state.signup_limits = signup_limits;
        svc.state.access = std::sync::Arc::new(users_access());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let users = Running::start(listener, svc.filter(), svc.kit.health.clone(), opts())?;

        let client = ClientConfig {
            timeout,
            attempts: 3,
            backoff: Duration::from_millis(20),
            breaker,
        };
        let tokens = signer(Duration::from_secs(600));
        let mut svc = auth::build(
            reqwest::Url::parse(&users.url())?,
            SERVICE,
            client,
            tokens,
            None,
        )?;
        svc.state.limits = login_limits;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let auth = Running::start(listener, svc.filter(), svc.kit.health.clone(), opts())?;
        Ok(Self {
            users: Some(users),
            auth,
            client: svc.state.users.clone(),
            http: reqwest::Client::new(),
            _dir: dir,
        })
    }

    fn users_url(&self, path: &str) -> Result<String> {
        Ok(format!(
            "{}{path}",
            self.users.as_ref().context("users stopped")?.url()
        ))
    }

    async fn register(&self, email: &str, password: &str) -> Result<String> {
        let r = self
            .http
            .post(self.users_url("/users")?)
            .json(&json!({"name": "Test", "email": email, "password": password}))
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await?;
        Ok(body["id"].as_str().context("id")?.to_owned())
    }

    async fn login(&self, email: &str, password: &str) -> Result<(StatusCode, Value)> {
        let r = self
            .http
            .post(format!("{}/login", self.auth.url()))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?;
        Ok((r.status(), r.json().await.unwrap_or(Value::Null)))
    }

    async fn verify(&self, token: &str) -> Result<(StatusCode, Value)> {
        let r = self
            .http
            .get(format!("{}/verify", self.auth.url()))
            .bearer_auth(token)
            .send()
            .await?;
        Ok((r.status(), r.json().await.unwrap_or(Value::Null)))
    }

    async fn users_verify_calls(&self) -> Result<f64> {
        let text = self
            .http
            .get(self.users_url("/metrics")?)
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| {
                l.starts_with("http_requests_total{") && l.contains("route=\"/users/verify\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum())
    }

    async fn auth_retries(&self) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.auth.url()))
            .send()
            .await?
            .text()
            .await?;
        metric_value(&text, "auth_users_retries_total").context("no auth_users_retries_total")
    }

    async fn set_users_faults(&self, body: Option<Value>) -> Result<()> {
        let url = self.users_url("/admin/faults")?;
        let req = match body {
            Some(b) => self.http.post(url).json(&b),
            None => self.http.delete(url),
        };
        let r = req.bearer_auth(ADMIN).send().await?;
        assert_eq!(r.status(), StatusCode::OK);
        Ok(())
    }
}

fn default_breaker() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 5,
        open_for: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn login_round_trip_through_both_services() -> Result<()> {
    // A registered user logs in through auth (which asks users) and the token verifies to
    // that user's id; wrong passwords and malformed bodies are refused.
    let p = Pair::start(default_breaker()).await?;
    let id = p.register("grace@example.com", "cobol-rules").await?;
    let (status, body) = p.login("Grace@Example.com", "cobol-rules").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tokenType"], "Bearer");
    assert_eq!(body["expiresIn"], 600);
    let token = body["token"].as_str().context("token")?.to_owned();

    let (status, claims) = p.verify(&token).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claims["sub"], id);
    assert_eq!(claims["iss"], "flotilla-auth");
    assert_eq!(claims["aud"], json!(["users", "orders"]));
    assert_eq!(claims["role"], "user");

    // The token opens the user's own account in users, and no other.
    let other = p.register("ada@example.com", "analytical").await?;
    for (path, expected) in [(&id, StatusCode::OK), (&other, StatusCode::FORBIDDEN)] {
        let r = p
            .http
            .get(p.users_url(&format!("/users/{path}"))?)
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(r.status(), expected, "/users/{path}");
    }

    let (status, body) = p.login("grace@example.com", "wrong-password").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_credentials"))
    );
    let (status, _) = p.login("nobody@example.com", "cobol-rules").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let r = p
        .http
        .post(format!("{}/login", p.auth.url()))
        .json(&json!({"email": "grace@example.com", "password": "x", "remember": true}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn a_wrong_service_credential_is_a_gateway_error_not_a_wrong_password() -> Result<()> {
    // users refuses the check of an auth holding another credential; auth reports 502 (a
    // configuration fault), never bad_credentials.
    let p = Pair::start(default_breaker()).await?;
    p.register("eve@example.com", "correct horse").await?;
    let svc = auth::build(
        reqwest::Url::parse(&p.users_url("/")?)?,
        "svc-Vq7m2Xk9Lp4Wz8Ru",
        ClientConfig::default(),
        signer(Duration::from_secs(600)),
        None,
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let auth = Running::start(listener, svc.filter(), svc.kit.health.clone(), opts())?;
    let r = p
        .http
        .post(format!("{}/login", auth.url()))
        .json(&json!({"email": "eve@example.com", "password": "correct horse"}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    auth.stop().await?;
    Ok(())
}

#[tokio::test]
async fn verify_refuses_tampered_foreign_and_expired_tokens() -> Result<()> {
    // Only untouched, unexpired tokens signed with auth's key pass /verify.
    let p = Pair::start(default_breaker()).await?;
    p.register("linus@example.com", "penguins!").await?;
    let (_, body) = p.login("linus@example.com", "penguins!").await?;
    let token = body["token"].as_str().context("token")?.to_owned();

    // Flip one character of the signature.
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() - 3;
    chars[i] = if chars[i] == 'x' { 'y' } else { 'x' };
    let tampered: String = chars.into_iter().collect();
    let (status, body) = p.verify(&tampered).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );

    let foreign = Signer::new(
        SigningKey::generate().map_err(anyhow::Error::msg)?,
        Vec::new(),
        vec!["users".into()],
        Duration::from_secs(600),
    );
    let (forged, _) = foreign.issue(UID).map_err(anyhow::Error::msg)?;
    let (status, _) = p.verify(&forged).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let same_key = signer(Duration::from_secs(60));
    let (expired, _) = same_key
        .issue_at(UID, auth::jwt::Role::User, jsonwebtoken_now() - 3600)
        .map_err(anyhow::Error::msg)?;
    let (status, body) = p.verify(&expired).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_expired"))
    );

    let r = p
        .http
        .get(format!("{}/verify", p.auth.url()))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[tokio::test]
async fn readiness_follows_users() -> Result<()> {
    // auth is ready while users answers and reports "users" failing once users is gone;
    // logins then fail with 503 instead of hanging.
    let mut p = Pair::start(default_breaker()).await?;
    let r = p
        .http
        .get(format!("{}/readyz", p.auth.url()))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);

    p.users.take().context("users")?.stop().await?;
    let r = p
        .http
        .get(format!("{}/readyz", p.auth.url()))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let report: Value = r.json().await?;
    assert_eq!(report["failing"][0]["check"], "users");
    let r = p
        .http
        .get(format!("{}/healthz", p.auth.url()))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);

    let (status, body) = p.login("a@example.com", "whatever1").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "users_unavailable");
    Ok(())
}

#[tokio::test]
async fn circuit_breaker_opens_and_closes() -> Result<()> {
    // Repeated failures open the breaker: logins get 503 without reaching users. After the
    // open period a trial call succeeds and the breaker closes again.
    let breaker = BreakerConfig {
        failure_threshold: 2,
        open_for: Duration::from_millis(500),
    };
    let p = Pair::start(breaker).await?;
    p.register("ken@example.com", "unix-forever").await?;
    p.set_users_faults(Some(json!({"errorRate": 1.0}))).await?;

    for _ in 0..2 {
        let (status, body) = p.login("ken@example.com", "unix-forever").await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("users_unavailable"))
        );
    }
    // Each failed login made 3 attempts (bounded retries).
    assert_eq!(p.users_verify_calls().await?, 6.0);
    assert_eq!(p.auth_retries().await?, 4.0);
    assert_eq!(p.client.breaker_state(), "open");
    let text = p
        .http
        .get(format!("{}/metrics", p.auth.url()))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        text.lines().any(|l| l == "auth_users_circuit_state 2"),
        "breaker gauge not open in metrics"
    );

    // While open (the period may already be over on a slow machine, so only check when
    // the breaker still reports open afterwards), logins are refused without a call.
    let before = p.users_verify_calls().await?;
    let (status, body) = p.login("ken@example.com", "unix-forever").await?;
    if body["error"] == "circuit_open" {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(p.users_verify_calls().await?, before);
    }

    p.set_users_faults(None).await?;
    poll("the breaker to close", Duration::from_secs(30), || async {
        match p.login("ken@example.com", "unix-forever").await? {
            (StatusCode::OK, _) => Ok(Some(())),
            (status, _) => bail!("last status {status}"),
        }
    })
    .await?;
    assert_eq!(p.client.breaker_state(), "closed");
    Ok(())
}

#[tokio::test]
async fn open_breaker_answers_without_calling_users() -> Result<()> {
    // With a long open period the refusal is deterministic: 503 circuit_open, Retry-After,
    // and users sees no request.
    let breaker = BreakerConfig {
        failure_threshold: 1,
        open_for: Duration::from_secs(600),
    };
    let p = Pair::start(breaker).await?;
    p.set_users_faults(Some(json!({"errorRate": 1.0}))).await?;
    let (status, _) = p.login("x@example.com", "password1").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let calls = p.users_verify_calls().await?;
    p.set_users_faults(None).await?;
    let r = p
        .http
        .post(format!("{}/login", p.auth.url()))
        .json(&json!({"email": "x@example.com", "password": "password1"}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "circuit_open");
    assert_eq!(p.users_verify_calls().await?, calls);
    Ok(())
}

#[tokio::test]
async fn slow_users_calls_time_out() -> Result<()> {
    // A users service slower than the client timeout yields 503 instead of a late success:
    // every attempt is cut off, so the answer cannot be the 200 users would eventually send.
    let p = Pair::start_with_timeout(default_breaker(), Duration::from_millis(300)).await?;
    p.register("slow@example.com", "patience!").await?;
    p.set_users_faults(Some(json!({"latencyMs": 3000}))).await?;
    let (status, body) = p.login("slow@example.com", "patience!").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "users_unavailable");
    // A timed-out check may still run on users: it is not repeated.
    assert_eq!(p.auth_retries().await?, 0.0);
    p.set_users_faults(None).await?;
    let (status, _) = p.login("slow@example.com", "patience!").await?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn retries_stay_within_the_budget_when_users_fails() -> Result<()> {
    // Against a users service that fails every call (breaker kept closed), retries add at
    // most the budget's share: calls stay near one per login instead of three.
    let breaker = BreakerConfig {
        failure_threshold: 10_000,
        open_for: Duration::from_secs(10),
    };
    let p = Pair::start(breaker).await?;
    p.set_users_faults(Some(json!({"errorRate": 1.0}))).await?;
    let logins = 40.0;
    for _ in 0..40 {
        let (status, _) = p.login("budget@example.com", "password1").await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let calls = p.users_verify_calls().await?;
    let bound = logins + auth::client::RETRY_BUDGET_MAX + auth::client::RETRY_BUDGET_RATIO * logins;
    assert!(
        calls <= bound,
        "{calls} calls for {logins} logins, budget allows {bound}"
    );
    assert_eq!(p.auth_retries().await?, calls - logins);
    Ok(())
}

#[tokio::test]
async fn login_forwards_the_request_id_to_users() -> Result<()> {
    // The x-request-id a client sends to auth arrives on auth's call to users, so one login
    // can be followed through both services' logs. users is stood in for by a real HTTP
    // server that records the header.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let users = warp::path!("users" / "verify")
        .and(warp::post())
        .and(warp::header::optional::<String>("x-request-id"))
        .map(move |id: Option<String>| {
            if let Ok(mut ids) = record.lock() {
                ids.push(id.unwrap_or_default());
            }
            warp::Reply::into_response(warp::reply::json(&json!({"id": UID})))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stand_in = Running::start(
        listener,
        users,
        flotilla_kit::Health::builder().build(),
        opts(),
    )?;
    let users_addr = stand_in.addr;
    let tokens = signer(Duration::from_secs(600));
    let svc = auth::build(
        reqwest::Url::parse(&format!("http://{users_addr}/"))?,
        SERVICE,
        ClientConfig::default(),
        tokens,
        None,
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let auth = Running::start(listener, svc.filter(), svc.kit.health.clone(), opts())?;
    let r = reqwest::Client::new()
        .post(format!("{}/login", auth.url()))
        .header("x-request-id", "trace-login-42")
        .json(&json!({"email": "a@example.com", "password": "password1"}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-request-id"], "trace-login-42");
    let ids = seen.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(ids, vec!["trace-login-42".to_owned()]);
    auth.stop().await?;
    stand_in.stop().await?;
    Ok(())
}

#[tokio::test]
async fn logins_are_rate_limited_per_account_and_per_address() -> Result<()> {
    // Past the per-account limit /login answers 429 with Retry-After — for the right password
    // too — without calling users; past the per-address limit every account is refused.
    let p = Pair::start_full(
        default_breaker(),
        Duration::from_secs(5),
        CredentialLimits::new(3, 5),
    )
    .await?;
    p.register("guess@example.com", "the-real-one").await?;
    for _ in 0..3 {
        let (status, _) = p.login("guess@example.com", "wrong-guess").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let calls = p.users_verify_calls().await?;
    let r = p
        .http
        .post(format!("{}/login", p.auth.url()))
        .json(&json!({"email": "GUESS@example.com", "password": "the-real-one"}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(
        p.users_verify_calls().await?,
        calls,
        "a limited login reached users"
    );
    // The address has spent 4 of 5: one more account passes, the next is refused.
    let (status, _) = p.login("other@example.com", "whatever1").await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = p.login("third@example.com", "whatever1").await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    Ok(())
}

#[tokio::test]
async fn users_verifies_with_the_keys_auth_publishes() -> Result<()> {
    // auth publishes its signing key at /.well-known/jwks.json under the kid its tokens carry;
    // a verifier holding nothing but what it fetched from there accepts auth's tokens.
    let p = Pair::start(default_breaker()).await?;
    p.register("kid@example.com", "rotate-me!").await?;
    let (_, body) = p.login("kid@example.com", "rotate-me!").await?;
    let token = body["token"].as_str().context("token")?.to_owned();

    let url = reqwest::Url::parse(&format!("{}/.well-known/jwks.json", p.auth.url()))?;
    let r = p.http.get(url.clone()).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    let jwks: flotilla_kit::jwt::Jwks = r.json().await?;
    let kids: Vec<_> = jwks.keys.iter().filter_map(|k| k.kid.clone()).collect();
    assert_eq!(kids, [key().public_key().kid()]);
    assert!(jwks
        .keys
        .iter()
        .all(|k| k.kty == "OKP" && k.crv == "Ed25519"));

    let verifier = Verifier::for_audience(AUDIENCE_USERS, Vec::new());
    assert_eq!(
        verifier.verify(&token),
        Err(auth::jwt::TokenError::UnknownKey)
    );
    let refresh = flotilla_kit::jwks::spawn_refresh(url, verifier.clone())?;
    poll(
        "the fetched keys to verify auth's token",
        Duration::from_secs(10),
        || {
            let verified = verifier.verify(&token);
            async move { Ok(verified.ok().map(|_| ())) }
        },
    )
    .await?;
    refresh.abort();
    Ok(())
}

#[tokio::test]
async fn a_signup_flood_does_not_fail_logins() -> Result<()> {
    // Sign-ups hammering users (real Argon2 cost, default hashing slots and sign-up limits)
    // neither take the credential checks' hashing slots nor open auth's breaker: every login
    // during the flood succeeds, and the flood itself is answered 429 or 503, never hangs.
    let p = Pair::start_with_users(
        default_breaker(),
        Duration::from_secs(5),
        CredentialLimits::new(0, 0),
        users::Passwords::new()?,
        users::SignupLimits::default(),
    )
    .await?;
    p.register("steady@example.com", "keep-going!").await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = p.users_url("/users")?;
    let flood: Vec<_> = (0..8)
        .map(|task| {
            let (stop, url, http) = (stop.clone(), url.clone(), p.http.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let body = json!({
                        "name": "Flood",
                        "email": format!("flood-{task}-{n}@example.com"),
                        "password": "flood-password",
                    });
                    if let Ok(r) = http.post(&url).json(&body).send().await {
                        statuses.push(r.status());
                    }
                }
                statuses
            })
        })
        .collect();
    let mut logins = Vec::new();
    for _ in 0..10 {
        let (status, body) = p.login("steady@example.com", "keep-going!").await?;
        logins.push((status, body["error"].clone()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut flood_statuses = Vec::new();
    for task in flood {
        flood_statuses.extend(task.await?);
    }
    assert!(
        logins.iter().all(|(s, _)| *s == StatusCode::OK),
        "logins during the flood: {logins:?}"
    );
    assert!(
        flood_statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "the flood was never limited: {flood_statuses:?}"
    );
    Ok(())
}
