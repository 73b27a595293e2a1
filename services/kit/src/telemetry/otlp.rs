//! Traces over OTLP and W3C `traceparent` propagation, on only when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//!
//! `tracing` stays the API: spans become OpenTelemetry spans through `tracing-opentelemetry`.
//! The protocol is `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`:
//! `grpc` (tonic) or `http/protobuf` (the default, as the specification says). The service name
//! is `OTEL_SERVICE_NAME`, else the binary's own name; the other `OTEL_*` exporter variables
//! (headers, timeout, compression) are read by the exporter itself.
//!
//! Unset, nothing is built: no exporter, no batch thread, no propagator, and the header helpers
//! return at once. This module never decides whether a failed export matters (the SDK logs it
//! and drops the batch); the request it traces goes on either way.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::TelemetryError;

/// Whether an exporter is installed; the header helpers do nothing until it is.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The OTLP endpoint variables, general and traces-only; either turns tracing on.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

fn env_set(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment asks for trace export.
pub fn requested() -> bool {
    ENDPOINT_VARS.iter().any(|v| env_set(v).is_some())
}

/// Builds the tracer provider when [`requested`], else `None`. Must run inside the Tokio
/// runtime: both exporters send from it.
pub(super) fn provider(service: &str) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if !requested() {
        return Ok(None);
    }
    let protocol = env_set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env_set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".to_owned());
    let exporter = match protocol.trim() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .build(),
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(OnRuntime::current()?)
            .build(),
        other => {
            return Err(TelemetryError(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported: use grpc or http/protobuf"
            )))
        }
    }
    .map_err(|e| TelemetryError(format!("OTLP trace exporter: {e}")))?;
    let name = env_set("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(name).build())
        .with_batch_exporter(exporter)
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Release);
    Ok(Some(provider))
}

/// The `tracing` layer feeding `provider`'s tracer.
pub(super) fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("flotilla-kit"))
}

/// Makes `span` a child of the caller's span named by the `traceparent` (and `tracestate`)
/// headers, so both services' spans are one trace. Nothing happens with tracing off or
/// without the header.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if !ENABLED.load(Ordering::Acquire) || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Fails only when the span is disabled by the filter; then there is nothing to link.
    let _ = span.set_parent(cx);
}

/// Records the trace id of `span` in its `trace_id` field (declared empty when the span was
/// made), so every log line written inside it names the trace it belongs to. Nothing happens
/// with tracing off.
pub fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    if !ENABLED.load(Ordering::Acquire) {
        return;
    }
    let cx = span.context();
    let trace = cx.span().span_context().clone();
    if trace.is_valid() {
        span.record("trace_id", tracing::field::display(trace.trace_id()));
    }
}

/// Adds `traceparent` (and `tracestate`) naming the current span to an outgoing request's
/// headers. Nothing happens with tracing off.
pub fn inject_current(headers: &mut http::HeaderMap) {
    if !ENABLED.load(Ordering::Acquire) {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The HTTP exporter's client: the workspace's reqwest, its requests run on the service's
/// runtime. The SDK's batch processor exports from its own thread, outside any runtime, where
/// reqwest cannot open a connection; spawning onto the runtime captured at start-up fixes that
/// without a second (blocking) HTTP stack.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl OnRuntime {
    fn current() -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| TelemetryError(format!("OTLP over HTTP needs the Tokio runtime: {e}")))?;
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| TelemetryError(format!("OTLP HTTP client: {e}")))?;
        Ok(Self { client, runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}
