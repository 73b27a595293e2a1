//! One trace across auth and users, as real processes exporting to a real OTLP receiver: a
//! login's span in auth is the parent of users' credential-check span, over both OTLP
//! protocols; each service's request log line names the trace id; spans still buffered are flushed on SIGTERM; with no endpoint set no exporter
//! thread runs.

use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_testkit::otlp::{ReceivedSpan, Receiver};
use flotilla_testkit::paths::workspace_binary;
use flotilla_testkit::process::{http_ok, Builder, Process};
use flotilla_testkit::wait::poll;
use reqwest::StatusCode;
use serde_json::json;

/// The variables that turn export on, cleared so the test's own environment cannot leak in.
const OTEL_VARS: [&str; 5] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
];

/// How a process exports: `(endpoint, protocol)`, or not at all.
type Export<'a> = Option<(String, &'a str)>;

fn with_export(mut b: Builder, export: &Export<'_>) -> Builder {
    for var in OTEL_VARS {
        b = b.env_remove(var);
    }
    match export {
        Some((endpoint, protocol)) => b
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            // Batches wait for shutdown, so arriving spans prove the flush on SIGTERM.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        // The other variables alone turn nothing on.
        None => b
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_SERVICE_NAME", "unused"),
    }
}

struct Pair {
    users: Process,
    auth: Process,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// users and auth in developer mode (the public development key and credential).
    async fn start(users_export: Export<'_>, auth_export: Export<'_>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let users = Builder::new("users", workspace_binary("users", "users")?)
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env("USERS_DEV", "true")
            .listen_env("LISTEN_ADDR")
            .env("SHUTDOWN_DELAY_MS", "0")
            .ready(http_ok("/readyz"));
        let users = with_export(users, &users_export).start().await?;
        let auth = Builder::new("auth", env!("CARGO_BIN_EXE_auth"))
            .arg("--dev")
            .env_remove("JWT_SECRET")
            .env_remove("JWT_SIGNING_KEY")
            .env("USERS_URL", users.url())
            .listen_env("LISTEN_ADDR")
            .env("SHUTDOWN_DELAY_MS", "0")
            .ready(http_ok("/readyz"));
        let auth = with_export(auth, &auth_export).start().await?;
        Ok(Self {
            users,
            auth,
            _dir: dir,
        })
    }

    /// Registers an account in users and logs in through auth (which asks users).
    async fn login(&self) -> Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let r = http
            .post(format!("{}/users", self.users.url()))
            .json(
                &json!({"name": "Grace", "email": "grace@example.com", "password": "cobol-rules"}),
            )
            .send()
            .await?;
        anyhow::ensure!(r.status() == StatusCode::CREATED, "sign-up: {}", r.status());
        let r = http
            .post(format!("{}/login", self.auth.url()))
            .json(&json!({"email": "grace@example.com", "password": "cobol-rules"}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == StatusCode::OK, "login: {}", r.status());
        Ok(())
    }

    async fn stop(self) -> Result<()> {
        let auth = self.auth.terminate().await?;
        let users = self.users.terminate().await?;
        anyhow::ensure!(
            auth.success() && users.success(),
            "auth {auth}, users {users}"
        );
        Ok(())
    }
}

/// Whether the process runs the OpenTelemetry batch exporter thread (Linux names threads in
/// `/proc`, cut to 15 bytes).
fn exporter_thread(process: &Process) -> Result<bool> {
    let pid = process.id().context("no pid")?;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = std::fs::read_to_string(task?.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with("OpenTelemetry") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, path: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == "request" && s.attribute("path") == path)
}

/// Logs in, stops both (flushing), and checks users' span is the child of auth's login span.
async fn login_is_one_trace(users_protocol: &str, auth_protocol: &str) -> Result<()> {
    let receiver = Receiver::start().await?;
    let endpoint = |protocol: &str| match protocol {
        "grpc" => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    };
    let pair = Pair::start(
        Some((endpoint(users_protocol), users_protocol)),
        Some((endpoint(auth_protocol), auth_protocol)),
    )
    .await?;
    assert!(exporter_thread(&pair.auth)? && exporter_thread(&pair.users)?);
    pair.login().await?;
    // Each service's request log line names the trace id it exported.
    let logged = |process: &Process, path: &str| {
        process
            .log()
            .lines()
            .filter(|l| l.contains(path))
            .find_map(|l| l.split("trace_id=").nth(1))
            .map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_hexdigit)
                    .collect::<String>()
            })
    };
    let (auth_logged, users_logged) =
        poll("trace ids in the logs", Duration::from_secs(10), || {
            let found = logged(&pair.auth, "/login").zip(logged(&pair.users, "/users/verify"));
            async move { Ok(found) }
        })
        .await?;
    pair.stop().await?;

    let (login, check) = poll("both services' spans", Duration::from_secs(10), || async {
        let spans = receiver.spans();
        Ok(find(&spans, "auth", "/login")
            .cloned()
            .zip(find(&spans, "users", "/users/verify").cloned()))
    })
    .await?;
    assert_eq!(login.parent_span_id, "", "the login starts the trace");
    assert_eq!(check.trace_id, login.trace_id, "one trace across the hop");
    assert_eq!(auth_logged, login.trace_id, "auth's log names its trace");
    assert_eq!(
        users_logged, check.trace_id,
        "users' log names the same trace"
    );
    assert_eq!(
        check.parent_span_id, login.span_id,
        "users' span is the login's child"
    );
    let protocols = [(&login, auth_protocol), (&check, users_protocol)];
    for (span, protocol) in protocols {
        let expected = if protocol == "grpc" { "grpc" } else { "http" };
        assert_eq!(span.protocol, expected, "{span:?}");
    }
    Ok(())
}

#[tokio::test]
async fn login_is_one_trace_across_auth_and_users_over_both_protocols() -> Result<()> {
    // auth exports over OTLP/HTTP protobuf, users over OTLP/gRPC; the trace joins all the same.
    login_is_one_trace("grpc", "http/protobuf").await
}

#[tokio::test]
async fn nothing_is_exported_without_an_endpoint() -> Result<()> {
    // With no OTLP endpoint (the protocol and service name set alone) neither service runs an
    // exporter thread, before or after serving a login, so nothing can be sent anywhere.
    let pair = Pair::start(None, None).await?;
    pair.login().await?;
    assert!(!exporter_thread(&pair.auth)?, "auth runs an exporter");
    assert!(!exporter_thread(&pair.users)?, "users runs an exporter");
    pair.stop().await
}
