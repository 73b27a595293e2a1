//! Property tests of the sample services' HTTP inputs: arbitrary methods, paths, query
//! strings, headers and bodies sent to the complete users and auth filters never panic and
//! never produce a server error; every 4xx carries the JSON error body
//! `{"error": code, "message": text}`.
//!
//! The test command runs 256 cases per service. For a longer run:
//! `FUZZ_CASES=20000 cargo nextest run -p auth --test it fuzz_http`.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use flotilla_kit::ratelimit::CredentialLimits;
use flotilla_kit::reply::ErrorBody;
use flotilla_kit::server::{DrainOptions, Running};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::support::{key, signer, SERVICE};

/// Cases per service in the test command; `FUZZ_CASES` overrides.
const DEFAULT_CASES: u32 = 256;

/// Ids of the accounts the generated tokens name.
const IDS: [&str; 2] = [
    "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c",
    "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
];

/// Valid `Authorization` values (an admin's and a user's token, the service credential), so
/// generated requests also reach the handlers behind users' authentication.
fn credentials() -> Vec<Vec<u8>> {
    let tokens = signer(Duration::from_secs(3600));
    let mut out = vec![format!("Bearer {SERVICE}").into_bytes()];
    for (id, role) in [
        (IDS[0], auth::jwt::Role::Admin),
        (IDS[1], auth::jwt::Role::User),
    ] {
        if let Ok((token, _)) = tokens.issue_as(id, role) {
            out.push(format!("Bearer {token}").into_bytes());
        }
    }
    out
}

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// One generated request.
#[derive(Debug, Clone)]
struct Input {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("users".to_owned()),
        Just("verify".to_owned()),
        Just("login".to_owned()),
        Just("admin".to_owned()),
        Just("faults".to_owned()),
        Just("readyz".to_owned()),
        Just("healthz".to_owned()),
        Just("metrics".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("-1".to_owned()),
        Just("%00".to_owned()),
        Just("%E2%98%83".to_owned()),
        Just("..".to_owned()),
        (0i64..100).prop_map(|n| n.to_string()),
        Just(IDS[0].to_owned()),
        Just(IDS[1].to_owned()),
        Just(".well-known".to_owned()),
        Just("jwks.json".to_owned()),
        "[A-Za-z0-9._~-]{0,16}",
        "(%[0-9A-F]{2}){1,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let query = prop_oneof![
        Just(String::new()),
        "[a-z]{1,8}=[A-Za-z0-9%-]{0,12}(&[a-z]{1,8}=[A-Za-z0-9%-]{0,12}){0,3}"
            .prop_map(|q| format!("?{q}")),
        Just("?limit=0".to_owned()),
        Just("?limit=99999999999999999999&offset=-5".to_owned()),
    ];
    (prop::collection::vec(segment(), 0..5), query)
        .prop_map(|(segs, q)| format!("/{}{q}", segs.join("/")))
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Visible ASCII, space, tab and obs-text: every byte a header value may carry.
        prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..64),
        Just(b"application/json".to_vec()),
        Just(b"Bearer ".to_vec()),
        Just(b"Bearer not.a.jwt".to_vec()),
        prop::sample::select(credentials()),
        Just(b"ejected".to_vec()),
        Just(b"99999999999999999999".to_vec()),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let name = prop::sample::select(vec![
        "content-type",
        "authorization",
        "x-request-id",
        "flotilla-traffic",
        "content-length",
        "accept",
    ]);
    prop::collection::vec((name, header_value()), 0..4)
}

fn json_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("1e309".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        ".{0,40}".prop_map(|s| serde_json::Value::String(s).to_string()),
        "[a-z]{1,10}@[a-z]{1,8}\\.[a-z]{2,3}".prop_map(|s| format!("\"{s}\"")),
    ];
    let field = prop::sample::select(vec![
        "name",
        "email",
        "password",
        "unhealthy",
        "errorRate",
        "latencyMs",
        "admin",
        "",
    ]);
    prop::collection::vec((field, value), 0..5).prop_map(|pairs| {
        let body: Vec<String> = pairs
            .into_iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::Value::String(k.to_owned())))
            .collect();
        format!("{{{}}}", body.join(","))
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..512),
        json_text().prop_map(String::into_bytes),
        Just(vec![b'['; 20_000]),
        Just(
            b"{\"name\":\"Fuzz\",\"email\":\"fuzz@example.com\",\"password\":\"long enough\"}"
                .to_vec()
        ),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]);
    (method, path(), headers(), body()).prop_map(|(method, path, headers, body)| Input {
        method,
        path,
        headers,
        body,
    })
}

async fn check(filter: &BoxedFilter<(Response,)>, input: Input) -> Result<(), TestCaseError> {
    let mut req = warp::test::request()
        .method(input.method)
        .path(&input.path)
        .body(Bytes::from(input.body));
    for (name, value) in &input.headers {
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            req = req.header(*name, v);
        }
    }
    let resp = req.reply(filter).await;
    let status = resp.status();
    prop_assert!(
        !status.is_server_error(),
        "{status} for {} {}",
        input.method,
        input.path
    );
    if status.is_client_error() {
        let parsed = serde_json::from_slice::<ErrorBody>(resp.body());
        prop_assert!(
            parsed.is_ok(),
            "{status} without a JSON error body: {:?}",
            String::from_utf8_lossy(resp.body())
        );
    }
    Ok(())
}

fn fuzz(rt: &tokio::runtime::Runtime, filter: &BoxedFilter<(Response,)>) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&input(), |input| rt.block_on(check(filter, input)));
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

async fn users_service(dir: &tempfile::TempDir) -> Result<users::Service> {
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let db = users::Db::connect(&url).await?;
    let mut svc = users::build(db, users::Passwords::low_cost()?, None, true)?;
    svc.state.limits = CredentialLimits::new(0, 0);
    svc.state.signup_limits = users::SignupLimits::new(0, 0);
    svc.state.access = std::sync::Arc::new(users::Access {
        tokens: Some(auth::Verifier::for_audience(
            auth::jwt::AUDIENCE_USERS,
            vec![key().public_key().clone()],
        )),
        service_token: Some(SERVICE.into()),
        ..users::Access::default()
    });
    Ok(svc)
}

#[test]
fn users_http_inputs_never_panic_and_errors_are_json_4xx() -> Result<()> {
    // Whatever a client sends to users, the answer is a success or a JSON 4xx.
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let svc = rt.block_on(users_service(&dir))?;
    fuzz(&rt, &svc.filter());
    Ok(())
}

#[test]
fn auth_http_inputs_never_panic_and_errors_are_json_4xx() -> Result<()> {
    // Whatever a client sends to auth (backed by a real users service), the answer is a
    // success or a JSON 4xx.
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let users = rt.block_on(async {
        let svc = users_service(&dir).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Ok::<_, anyhow::Error>(Running::start(
            listener,
            svc.filter(),
            svc.kit.health.clone(),
            DrainOptions {
                shutdown_delay: Duration::ZERO,
                ..DrainOptions::default()
            },
        )?)
    })?;
    let tokens = signer(Duration::from_secs(600));
    let svc = rt.block_on(async {
        auth::build(
            reqwest::Url::parse(&users.url())?,
            SERVICE,
            auth::ClientConfig::default(),
            tokens,
            None,
        )
        .map_err(anyhow::Error::from)
    })?;
    fuzz(&rt, &svc.filter());
    rt.block_on(users.stop())?;
    Ok(())
}
