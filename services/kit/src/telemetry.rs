//! Structured logging with `tracing`: text or JSON output, one span per request carrying its
//! request id, and the same spans exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! ([`otlp`]), the request span continuing the caller's trace from its `traceparent` header.
//!
//! The request id is guaranteed on every request by [`crate::server`] (an incoming
//! `x-request-id` is kept, otherwise one is generated) and returned in the response.
//!
//! The operator (`operator/src/telemetry.rs`) and kubesim set up `tracing` too, and handle
//! SIGTERM like [`crate::server::shutdown_signal`]; they are not shared on purpose. This crate
//! cannot depend on the operator, and the operator and kubesim depending on it would pull the
//! sample services' stack (warp, hyper server, prometheus process metrics) into the controller
//! binary for about fifteen lines. The copies also differ where it matters: services log to
//! stdout with the per-request span and read `LOG_FORMAT` from the environment leniently; the
//! operator logs to stderr and takes `--log-format` as a clap value; kubesim is a dev tool
//! that logs warnings only.

pub mod otlp;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::LogFormat;

/// Header carrying the request id in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Installing the global subscriber failed (one was already installed), or the OTLP variables
/// ask for something this build cannot do.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the log subscriber: {0}")]
pub struct TelemetryError(String);

/// Default filter when `RUST_LOG` is unset: `info`, minus warp's own per-request trace events
/// (the kit logs one line per finished request itself).
pub const DEFAULT_LOG_FILTER: &str = "info,warp::filters::trace=off";

/// What [`init_tracing`] installed. Keep it until the process ends: dropping it flushes the
/// spans not yet exported and stops the exporter (a no-op when tracing export is off).
#[must_use = "dropping it stops trace export"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
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

/// Installs the global subscriber: `RUST_LOG` filters (default [`DEFAULT_LOG_FILTER`]),
/// `format` picks text or JSON lines, and with an OTLP endpoint set the spans are exported as
/// `service` (unless `OTEL_SERVICE_NAME` names it). Call it inside the Tokio runtime.
pub fn init_tracing(format: LogFormat, service: &str) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colours only on a terminal; pods and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).boxed(),
    };
    let provider = otlp::provider(service)?;
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(provider.as_ref().map(otlp::layer))
        .try_init();
    let telemetry = Telemetry { provider };
    result.map_err(|e| TelemetryError(e.to_string()))?;
    Ok(telemetry)
}

/// The span every request runs in: method, raw path (logs only, never a metric label), the
/// request id and, with tracing on, the trace id (so each log line names its trace).
pub fn request_span(info: warp::trace::Info<'_>) -> tracing::Span {
    let request_id = info
        .request_headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::info_span!(
        "request",
        method = %info.method(),
        path = %info.path(),
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    otlp::set_parent_from_headers(&span, info.request_headers());
    otlp::record_trace_id(&span);
    span
}
