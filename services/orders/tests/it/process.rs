//! The `orders` binary as a process, driven by real tonic clients: health, reflection,
//! authenticated calls, per-code metrics, fault injection, the traffic verdict (an ejected pod
//! sends HTTP/2 GOAWAY on open connections) and a clean exit on SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use orders::pb::orders_client::OrdersClient;
use orders::pb::{CreateOrderRequest, GetOrderRequest, ListOrdersRequest};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use flotilla_kit::jwt::{Signer, SigningKey};
use flotilla_kit::verdict::testing::TestSigner;
use flotilla_kit::verdict::unix_ms_now;
use flotilla_testkit::process::{Builder, Check, Process};

const ADMIN: &str = "orders-admin-4f9c2e7b1a8d";
/// Two users' stable ids.
pub(crate) const ADA: &str = "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c";
const BOB: &str = "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";

/// auth's signing key in these tests; orders gets only its public half.
pub(crate) fn key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("key"))
}

fn signer(audiences: &[&str]) -> Signer {
    Signer::new(
        key().clone(),
        Vec::new(),
        audiences.iter().map(|a| (*a).to_owned()).collect(),
        Duration::from_secs(600),
    )
}

struct Orders {
    process: Process,
    _dir: tempfile::TempDir,
}

/// orders is ready when its gRPC health service says SERVING, as the leading prober sees it.
pub(crate) fn grpc_serving() -> Check {
    flotilla_testkit::process::check(|addr: SocketAddr| async move {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(check(channel, None).await? == ServingStatus::Serving)
    })
}

impl Orders {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let process = Builder::new("orders", env!("CARGO_BIN_EXE_orders"))
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .listen_env("LISTEN_ADDR")
            .env("JWT_PUBLIC_KEYS", key().public_key().to_pem())
            .env("ADMIN_TOKEN", ADMIN)
            .env("POD_NAME", POD)
            .env("FLOTILLA_VERDICT_KEYS", operator().keys_entry())
            .env("SHUTDOWN_DELAY_MS", "200")
            .ready(grpc_serving())
            .start()
            .await?;
        Ok(Self { process, _dir: dir })
    }

    fn url(&self) -> String {
        self.process.url()
    }

    async fn channel(&self) -> Result<Channel> {
        Ok(Channel::from_shared(self.url())?.connect().await?)
    }

    async fn faults(&self, body: &str) -> Result<()> {
        let r = reqwest::Client::new()
            .post(format!("{}/admin/faults", self.url()))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "faults: {}", r.status());
        Ok(())
    }

    async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.url()))
            .await?
            .text()
            .await?)
    }
}

pub(crate) fn authed<T>(msg: T, user: &str) -> Result<Request<T>> {
    authed_for(msg, user, &["users", "orders"])
}

fn authed_for<T>(msg: T, user: &str, audiences: &[&str]) -> Result<Request<T>> {
    let (token, _) = signer(audiences).issue(user)?;
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

/// The pod's name, as Flotilla gives it in `POD_NAME`.
const POD: &str = "orders-5c8d-xyz12";

/// The operator's verdict key.
fn operator() -> TestSigner {
    TestSigner::new("k1", [42; 32])
}

/// A health check as the leading prober sends it, the verdict signed by the operator's key.
async fn check(channel: Channel, verdict: Option<&str>) -> Result<ServingStatus> {
    let signed = verdict.map(|v| (v, Some(operator().header(POD, v, unix_ms_now()))));
    check_as(channel, signed).await
}

/// A health check with a verdict and whatever signature the sender has.
async fn check_as(
    channel: Channel,
    verdict: Option<(&str, Option<String>)>,
) -> Result<ServingStatus> {
    let mut req = Request::new(HealthCheckRequest::default());
    if let Some((v, sig)) = verdict {
        req.metadata_mut().insert("flotilla-traffic", v.parse()?);
        if let Some(sig) = sig {
            req.metadata_mut()
                .insert("flotilla-verdict-signature", sig.parse()?);
        }
    }
    Ok(HealthClient::new(channel)
        .check(req)
        .await?
        .get_ref()
        .status())
}

#[tokio::test]
async fn orders_api_health_metrics_and_faults_over_grpc() -> Result<()> {
    // The API works only with a valid token, keeps orders private, and every call is counted
    // under its gRPC code; injected faults reach gRPC callers and the health service.
    let orders = Orders::start().await?;
    let mut api = OrdersClient::new(orders.channel().await?);
    let anonymous = api
        .create_order(CreateOrderRequest {
            item: "tea".into(),
            quantity: 1,
        })
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let created = api
        .create_order(authed(
            CreateOrderRequest {
                item: "tea".into(),
                quantity: 3,
            },
            ADA,
        )?)
        .await?
        .into_inner();
    assert_eq!((created.owner.as_str(), created.quantity), (ADA, 3));
    let got = api
        .get_order(authed(GetOrderRequest { id: created.id }, ADA)?)
        .await?;
    assert_eq!(got.into_inner(), created);
    let foreign = api
        .get_order(authed(GetOrderRequest { id: created.id }, BOB)?)
        .await
        .expect_err("another user's order");
    assert_eq!(foreign.code(), Code::NotFound);
    // A token auth issued for users only, or whose subject is an old row id, opens nothing.
    for req in [
        authed_for(ListOrdersRequest::default(), ADA, &["users"])?,
        authed(ListOrdersRequest::default(), "7")?,
    ] {
        let refused = api.list_orders(req).await.expect_err("refused");
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    let invalid = api
        .create_order(authed(
            CreateOrderRequest {
                item: "tea".into(),
                quantity: 0,
            },
            ADA,
        )?)
        .await
        .expect_err("zero quantity");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let listed = api
        .list_orders(authed(ListOrdersRequest::default(), ADA)?)
        .await?
        .into_inner();
    assert_eq!(listed.orders, vec![created]);

    let metrics = orders.metrics().await?;
    for series in [
        r#"grpc_server_handled_total{grpc_code="OK",grpc_method="CreateOrder",grpc_service="flotilla.orders.v1.Orders"} 1"#,
        r#"grpc_server_handled_total{grpc_code="Unauthenticated",grpc_method="CreateOrder",grpc_service="flotilla.orders.v1.Orders"} 1"#,
        r#"grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetOrder",grpc_service="flotilla.orders.v1.Orders"} 1"#,
    ] {
        assert!(metrics.contains(series), "missing {series} in:\n{metrics}");
    }

    orders.faults(r#"{"errorRate":1.0}"#).await?;
    let failed = api
        .list_orders(authed(ListOrdersRequest::default(), ADA)?)
        .await
        .expect_err("injected");
    assert_eq!(failed.code(), Code::Internal);
    orders.faults(r#"{"unhealthy":true}"#).await?;
    assert_eq!(
        check(orders.channel().await?, None).await?,
        ServingStatus::NotServing
    );
    orders.faults("{}").await?;
    assert_eq!(
        check(orders.channel().await?, None).await?,
        ServingStatus::Serving
    );

    let mut unknown = HealthClient::new(orders.channel().await?);
    let err = unknown
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), Code::NotFound);
    Ok(())
}

/// The next status on a health watch, within a bound far under any lifetime.
async fn next_status(
    stream: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> Result<ServingStatus> {
    let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .context("no message")??
        .context("the watch ended")?;
    Ok(msg.status())
}

#[tokio::test]
async fn health_watch_streams_each_readiness_change() -> Result<()> {
    // `grpc.health.v1.Health/Watch` says SERVING, then NOT_SERVING the moment the instance
    // turns unready (here a fault through `/admin/faults`), then SERVING again, on one open
    // stream: what Flotilla's prober listens to instead of waiting for its next Check. An
    // unknown service name gets SERVICE_UNKNOWN on a stream that stays open.
    let orders = Orders::start().await?;
    let mut health = HealthClient::new(orders.channel().await?);
    let mut stream = health
        .watch(HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(next_status(&mut stream).await?, ServingStatus::Serving);
    orders.faults(r#"{"unhealthy":true}"#).await?;
    assert_eq!(next_status(&mut stream).await?, ServingStatus::NotServing);
    orders.faults("{}").await?;
    assert_eq!(next_status(&mut stream).await?, ServingStatus::Serving);
    // A new connection: the unready instance sent GOAWAY on the first (open streams finish).
    let mut unknown = HealthClient::new(orders.channel().await?)
        .watch(HealthCheckRequest {
            service: "nope".into(),
        })
        .await?
        .into_inner();
    let first = unknown.message().await?.context("the watch ended")?;
    assert_eq!(first.status(), ServingStatus::ServiceUnknown);
    Ok(())
}

#[tokio::test]
async fn the_http_readiness_watch_counts_calls_failing_codes_as_errors() -> Result<()> {
    // Flotilla's readiness watch on orders' port: its heartbeat lines carry the API calls
    // answered so far, and those that failed on the server's side (INTERNAL here), not a
    // caller's mistakes (UNAUTHENTICATED) nor the health checks.
    let orders = Orders::start().await?;
    let mut api = OrdersClient::new(orders.channel().await?);
    let mut watch = reqwest::Client::new()
        .get(format!("{}/readyz", orders.url()))
        .header("flotilla-watch", "heartbeat=50")
        .send()
        .await?;
    anyhow::ensure!(
        watch.headers().contains_key("flotilla-watch"),
        "orders serves the watch"
    );
    for _ in 0..3 {
        let err = api
            .get_order(GetOrderRequest { id: 1 })
            .await
            .expect_err("no token");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    check(orders.channel().await?, None).await?;
    orders.faults(r#"{"errorRate":1.0}"#).await?;
    for _ in 0..2 {
        let err = api
            .get_order(GetOrderRequest { id: 1 })
            .await
            .expect_err("injected");
        assert_eq!(err.code(), Code::Internal);
    }
    let want = "ready requests=5 errors=2";
    let mut seen = String::new();
    while !seen.lines().any(|l| l == want) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), watch.chunk())
            .await
            .with_context(|| format!("no `{want}` line; lines so far:\n{seen}"))??
            .with_context(|| format!("the watch ended; lines so far:\n{seen}"))?;
        seen.push_str(std::str::from_utf8(&chunk)?);
    }
    Ok(())
}

#[tokio::test]
async fn reflection_lists_the_services() -> Result<()> {
    // grpcurl-style discovery works: reflection names the orders and health services.
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let orders = Orders::start().await?;
    let mut client = ServerReflectionClient::new(orders.channel().await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let reply = stream.next().await.context("no reflection reply")??;
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        bail!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"flotilla.orders.v1.Orders".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    Ok(())
}

#[tokio::test]
async fn ejected_verdict_sends_goaway_and_sigterm_exits_cleanly() -> Result<()> {
    // A client's long-lived HTTP/2 connection is closed by the server once a probe says the
    // pod is ejected, so the client reconnects through the Service; SIGTERM exits 0.
    let orders = Orders::start().await?;
    let stream = tokio::net::TcpStream::connect(orders.process.addr()).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let healthz =
        http::Request::get(format!("{}/healthz", orders.url())).body(Empty::<Bytes>::new())?;
    assert_eq!(sender.send_request(healthz).await?.status(), 200);
    assert!(!conn.is_finished(), "connection closed before any verdict");

    assert_eq!(
        check(orders.channel().await?, Some("serving")).await?,
        ServingStatus::Serving
    );
    let again =
        http::Request::get(format!("{}/healthz", orders.url())).body(Empty::<Bytes>::new())?;
    assert_eq!(
        sender.send_request(again).await?.status(),
        200,
        "serving must keep connections"
    );

    // A verdict nobody signed, or someone else signed, changes nothing.
    let forged = TestSigner::new("k1", [9; 32]).header(POD, "ejected", unix_ms_now());
    for sig in [None, Some(forged)] {
        assert_eq!(
            check_as(orders.channel().await?, Some(("ejected", sig))).await?,
            ServingStatus::Serving
        );
        let probe =
            http::Request::get(format!("{}/healthz", orders.url())).body(Empty::<Bytes>::new())?;
        assert_eq!(sender.send_request(probe).await?.status(), 200);
        assert!(
            !conn.is_finished(),
            "a spoofed verdict closed the connection"
        );
    }

    // An ejected pod is still healthy: it says SERVING and closes its connections.
    assert_eq!(
        check(orders.channel().await?, Some("ejected")).await?,
        ServingStatus::Serving
    );
    tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .context("connection still open 20 s after the ejected verdict")???;

    let exit = orders.process.terminate().await?;
    assert_eq!(exit.code(), Some(0), "{exit}");
    Ok(())
}
