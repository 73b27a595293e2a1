//! One trace from a gRPC client into the `orders` process, exported to a real OTLP receiver:
//! the client's span travels as `traceparent` metadata and orders' span for the call is its
//! child in the same trace, flushed to the receiver on SIGTERM.

use std::time::Duration;

use anyhow::{Context as _, Result};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use orders::pb::orders_client::OrdersClient;
use orders::pb::ListOrdersRequest;
use tonic::transport::Channel;

use flotilla_testkit::otlp::Receiver;
use flotilla_testkit::process::Builder;
use flotilla_testkit::wait::poll;

use crate::process::{authed, grpc_serving, key, ADA};

#[tokio::test]
async fn a_grpc_call_continues_the_clients_trace() -> Result<()> {
    // The call's server span in orders has the client's span as parent, in the client's
    // trace; orders exports over OTLP/HTTP to the traces-specific endpoint.
    let receiver = Receiver::start().await?;
    let dir = tempfile::tempdir()?;
    let orders = Builder::new("orders", env!("CARGO_BIN_EXE_orders"))
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .listen_env("LISTEN_ADDR")
        .env("JWT_PUBLIC_KEYS", key().public_key().to_pem())
        .env("SHUTDOWN_DELAY_MS", "0")
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", receiver.http_endpoint()),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .ready(grpc_serving())
        .start()
        .await?;

    // The client's own span, from an SDK tracer in this test.
    let provider = SdkTracerProvider::builder().build();
    let mut span = provider.tracer("orders-client").start("list orders");
    let client = span.span_context().clone();
    let cx = Context::current().with_remote_span_context(client.clone());
    let mut headers = http::HeaderMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut headers));
    let traceparent = headers
        .get("traceparent")
        .context("no traceparent")?
        .to_str()?
        .to_owned();

    let mut api = OrdersClient::new(Channel::from_shared(orders.url())?.connect().await?);
    let mut req = authed(ListOrdersRequest::default(), ADA)?;
    req.metadata_mut()
        .insert("traceparent", traceparent.parse()?);
    api.list_orders(req).await?;
    span.end();
    let exit = orders.terminate().await?;
    assert!(exit.success(), "{exit}");

    let call = poll(
        "orders' span of the call",
        Duration::from_secs(10),
        || async {
            Ok(receiver.spans().into_iter().find(|s| {
                s.service == "orders"
                    && s.attribute("method") == "/flotilla.orders.v1.Orders/ListOrders"
            }))
        },
    )
    .await?;
    assert_eq!(call.name, "grpc");
    assert_eq!(call.trace_id, client.trace_id().to_string());
    assert_eq!(call.parent_span_id, client.span_id().to_string());
    assert_eq!(call.protocol, "http");
    Ok(())
}
