//! Logging setup: `tracing` with text or JSON output, filtered by `RUST_LOG` (default `info`),
//! and the same spans exported with OpenTelemetry over OTLP when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
//!
//! The protocol is `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc`
//! (tonic) or `http/protobuf` (the default); the service name `OTEL_SERVICE_NAME`, else
//! `flotilla-operator`. Unset, no exporter and no batch thread exist. A bad OTLP setting is
//! logged and the operator runs without export: tracing must never keep the controller down.
//!
//! The sample services' kit and kubesim have their own few lines of the same setup (and of
//! SIGTERM handling) on purpose: the sample services are meant to be read and copied as examples
//! of the health and traffic contract without the operator's crates, and the operator must not
//! depend on a sample kit or on the test cluster, so there is no crate all three could share
//! without inverting that direction. The copies also differ where their users differ (kubesim
//! logs `warn` by default and has no JSON output; the operator sends OTLP/HTTP with hyper, which
//! it already uses, where the services use reqwest).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Service name of the exported spans when `OTEL_SERVICE_NAME` is unset.
pub const SERVICE_NAME: &str = "flotilla-operator";

/// What [`init`] installed. Keep it until the process ends: dropping it flushes the spans not
/// yet exported and stops the exporter (nothing to do when export is off).
#[must_use = "dropping it stops trace export"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing traces at shutdown failed");
            }
        }
    }
}

/// Installs the global subscriber. Calling it twice keeps the first one. Call it inside the
/// Tokio runtime: the exporters send from it.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let (provider, otlp_error) = match otlp_provider() {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("flotilla-operator")));
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    if let Err(e) = result {
        tracing::debug!(error = %e, "tracing subscriber already installed");
    }
    if let Some(e) = otlp_error {
        tracing::error!(error = %e, "OTLP trace export is off");
    }
    Telemetry { provider }
}

fn env_set(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// The tracer provider when an OTLP endpoint is set, else `None`.
fn otlp_provider() -> Result<Option<SdkTracerProvider>, String> {
    if env_set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
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
        "http/protobuf" => {
            let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
            // The same deadline the exporter gives a gRPC export.
            let client = HyperClient::with_default_connector(EXPORT_TIMEOUT, None);
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(OnRuntime { client, runtime })
                .build()
        }
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported: use grpc or http/protobuf"
            ))
        }
    }
    .map_err(|e| e.to_string())?;
    let name = env_set("OTEL_SERVICE_NAME").unwrap_or_else(|| SERVICE_NAME.to_owned());
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(name)
                    .build(),
            )
            .with_batch_exporter(exporter)
            .build(),
    ))
}

/// Deadline of one OTLP/HTTP export (the OpenTelemetry default).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The HTTP exporter's client, its requests run on the operator's runtime: the SDK's batch
/// processor exports from its own thread, outside any runtime, where hyper cannot connect.
#[derive(Debug)]
struct OnRuntime {
    client: HyperClient,
    runtime: tokio::runtime::Handle,
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
