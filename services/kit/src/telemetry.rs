//! Structured logging with `tracing`: text or JSON output, one span per request carrying its
//! request id.
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

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Header carrying the request id in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Installing the global subscriber failed (one was already installed).
#[derive(Debug, thiserror::Error)]
#[error("cannot install the log subscriber: {0}")]
pub struct TelemetryError(String);

/// Default filter when `RUST_LOG` is unset: `info`, minus warp's own per-request trace events
/// (the kit logs one line per finished request itself).
pub const DEFAULT_LOG_FILTER: &str = "info,warp::filters::trace=off";

/// Installs the global subscriber: `RUST_LOG` filters (default [`DEFAULT_LOG_FILTER`]),
/// `format` picks text or JSON lines.
pub fn init_tracing(format: LogFormat) -> Result<(), TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colours only on a terminal; pods and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| TelemetryError(e.to_string()))
}

/// The span every request runs in: method, raw path (logs only, never a metric label) and the
/// request id.
pub fn request_span(info: warp::trace::Info<'_>) -> tracing::Span {
    let request_id = info
        .request_headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %info.method(),
        path = %info.path(),
        request_id = %request_id,
    )
}
