//! Who may call the users API, over real HTTP on loopback: anonymous callers get 401, a user
//! reaches only their own account (403 elsewhere), an admin's token reaches every account, the
//! credential check needs auth's service credential, and admin addresses are protected.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use flotilla_kit::jwt::{Role, Signer, SigningKey, Verifier, AUDIENCE_USERS};
use flotilla_kit::server::{DrainOptions, Running};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use users::{Access, Db, Passwords, SignupLimits};

use crate::support::SERVICE;

const ADMIN_TOKEN: &str = "adm-1b9d7c3e5f2a4b6c";
const ROOT: &str = "root@example.com";

struct Api {
    srv: Running,
    http: reqwest::Client,
    tokens: Signer,
    _dir: tempfile::TempDir,
}

/// auth's signer for users' audience, with a fresh key.
fn signer(key: SigningKey) -> Signer {
    Signer::new(
        key,
        Vec::new(),
        vec![AUDIENCE_USERS.into()],
        Duration::from_secs(600),
    )
}

/// An admin id no account has.
const ADMIN_ID: &str = "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c";

impl Api {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("u.db").display())).await?;
        let mut service = users::build(db, Passwords::low_cost()?, Some(ADMIN_TOKEN.into()), true)?;
        service.state.signup_limits = SignupLimits::new(0, 0);
        let key = SigningKey::generate()?;
        service.state.access = Arc::new(Access {
            tokens: Some(Verifier::for_audience(
                AUDIENCE_USERS,
                vec![key.public_key().clone()],
            )),
            service_token: Some(SERVICE.into()),
            admin_emails: [ROOT.to_owned()].into(),
            admin_token: Some(ADMIN_TOKEN.into()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let opts = DrainOptions {
            shutdown_delay: Duration::ZERO,
            ..DrainOptions::default()
        };
        let srv = Running::start(listener, service.filter(), service.kit.health.clone(), opts)?;
        Ok(Self {
            srv,
            http: reqwest::Client::new(),
            tokens: signer(key),
            _dir: dir,
        })
    }

    /// `method path` with an optional bearer credential and JSON body: status and error code.
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.srv.url()));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        Ok((r.status(), r.json().await.unwrap_or(Value::Null)))
    }

    async fn sign_up(&self, email: &str, bearer: Option<&str>) -> Result<(StatusCode, Value)> {
        let body = json!({"name": "T", "email": email, "password": "correct horse"});
        self.call(Method::POST, "/users", bearer, Some(body)).await
    }

    fn token(&self, id: &str, role: Role) -> Result<String> {
        Ok(self.tokens.issue_as(id, role)?.0)
    }
}

#[tokio::test]
async fn anonymous_callers_get_401_on_every_account_route() -> Result<()> {
    // Without a token (or with a forged or expired one) no account can be read, listed,
    // changed or deleted; sign-up stays open.
    let api = Api::start().await?;
    let (status, ada) = api.sign_up("ada@example.com", None).await?;
    assert_eq!(status, StatusCode::CREATED, "{ada}");
    let id = ada["id"].as_str().unwrap_or_default();
    let path = format!("/users/{id}");
    let forged = signer(SigningKey::generate()?).issue_as(id, Role::Admin)?.0;
    let expired = api
        .tokens
        .issue_at(id, Role::User, jsonwebtoken_now() - 3600)?
        .0;
    for (bearer, code) in [
        (None, "missing_token"),
        (Some(forged.as_str()), "invalid_token"),
        (Some(expired.as_str()), "token_expired"),
        (Some(SERVICE), "invalid_token"),
    ] {
        for (method, path, body) in [
            (Method::GET, path.as_str(), None),
            (Method::GET, "/users", None),
            (Method::PUT, path.as_str(), Some(json!({"name": "X"}))),
            (Method::DELETE, path.as_str(), None),
        ] {
            let (status, resp) = api.call(method.clone(), path, bearer, body).await?;
            assert_eq!(
                (status, resp["error"].as_str()),
                (StatusCode::UNAUTHORIZED, Some(code)),
                "{method} {path}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn users_reach_only_their_own_account_and_admins_every_account() -> Result<()> {
    // Own account: 200; someone else's or the listing: 403; an admin's token: 200 everywhere.
    let api = Api::start().await?;
    let ada = api.sign_up("ada@example.com", None).await?.1["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let bob = api.sign_up("bob@example.com", None).await?.1["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ada_token = api.token(&ada, Role::User)?;
    let admin = api.token(ADMIN_ID, Role::Admin)?;
    let own = format!("/users/{ada}");
    let other = format!("/users/{bob}");

    let (status, me) = api.call(Method::GET, &own, Some(&ada_token), None).await?;
    assert_eq!(
        (status, me["email"].as_str()),
        (StatusCode::OK, Some("ada@example.com"))
    );
    let rename = || Some(json!({"name": "Ada L"}));
    assert_eq!(
        api.call(Method::PUT, &own, Some(&ada_token), rename())
            .await?
            .0,
        StatusCode::OK
    );
    for (method, path, body) in [
        (Method::GET, other.as_str(), None),
        (Method::PUT, other.as_str(), rename()),
        (Method::DELETE, other.as_str(), None),
        (Method::GET, "/users", None),
    ] {
        let (status, resp) = api
            .call(method.clone(), path, Some(&ada_token), body)
            .await?;
        assert_eq!(
            (status, resp["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{method} {path}"
        );
    }
    let (status, bob_now) = api.call(Method::GET, &other, Some(&admin), None).await?;
    assert_eq!(
        (status, bob_now["name"].as_str()),
        (StatusCode::OK, Some("T"))
    );
    let (status, page) = api.call(Method::GET, "/users", Some(&admin), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        api.call(Method::PUT, &other, Some(&admin), rename())
            .await?
            .0,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::DELETE, &other, Some(&admin), None)
            .await?
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call(Method::DELETE, &own, Some(&ada_token), None)
            .await?
            .0,
        StatusCode::NO_CONTENT
    );
    Ok(())
}

#[tokio::test]
async fn the_credential_check_needs_the_service_credential() -> Result<()> {
    // POST /users/verify without or with a wrong service credential (or a user's token) is 401
    // and checks nothing; with auth's credential it answers the account and its role.
    let api = Api::start().await?;
    let created = api.sign_up("ada@example.com", None).await?.1;
    let id = created["id"].as_str();
    let creds = || Some(json!({"email": "ada@example.com", "password": "correct horse"}));
    let user_token = api.token(id.unwrap_or_default(), Role::User)?;
    for bearer in [
        None,
        Some("svc-Vq7m2Xk9Lp4Wz8Ru"),
        Some(user_token.as_str()),
    ] {
        let (status, resp) = api
            .call(Method::POST, "/users/verify", bearer, creds())
            .await?;
        assert_eq!(
            (status, resp["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("service_unauthorized")),
            "{bearer:?}"
        );
    }
    let (status, ok) = api
        .call(Method::POST, "/users/verify", Some(SERVICE), creds())
        .await?;
    assert_eq!(
        (status, ok["id"].as_str(), ok["role"].as_str()),
        (StatusCode::OK, id, Some("user"))
    );
    Ok(())
}

#[tokio::test]
async fn admin_addresses_need_the_admin_token_and_carry_the_admin_role() -> Result<()> {
    // Nobody can claim an ADMIN_EMAILS address by signing up first or by changing their own
    // address to it; created with ADMIN_TOKEN, the account verifies with the admin role.
    let api = Api::start().await?;
    let (status, resp) = api.sign_up(ROOT, None).await?;
    assert_eq!(
        (status, resp["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let ada = api.sign_up("ada@example.com", None).await?.1["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ada_token = api.token(&ada, Role::User)?;
    let (status, _) = api
        .call(
            Method::PUT,
            &format!("/users/{ada}"),
            Some(&ada_token),
            Some(json!({"email": ROOT})),
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, root) = api.sign_up(ROOT, Some(ADMIN_TOKEN)).await?;
    assert_eq!(status, StatusCode::CREATED, "{root}");
    let creds = json!({"email": ROOT, "password": "correct horse"});
    let (status, ok) = api
        .call(Method::POST, "/users/verify", Some(SERVICE), Some(creds))
        .await?;
    assert_eq!(
        (status, ok["role"].as_str()),
        (StatusCode::OK, Some("admin"))
    );
    Ok(())
}

#[tokio::test]
async fn credentials_are_checked_before_the_body_is_read() -> Result<()> {
    // An anonymous update and an unauthenticated credential check get 401 while their
    // (chunked) bodies are still unsent: users never buffers a stranger's body.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::start().await?;
    for head in [
        "PUT /users/0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c",
        "POST /users/verify",
    ] {
        let mut s = tokio::net::TcpStream::connect(api.srv.addr).await?;
        let request = format!(
            "{head} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n1\r\n{{\r\n"
        );
        s.write_all(request.as_bytes()).await?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await??;
        let line = String::from_utf8_lossy(&buf[..n]);
        assert!(line.starts_with("HTTP/1.1 401"), "{head}: {line}");
    }
    Ok(())
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
