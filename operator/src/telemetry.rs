//! Logging setup: `tracing` with text or JSON output, filtered by `RUST_LOG` (default `info`).
//!
//! The sample services' kit and kubesim have their own few lines of the same setup (and of
//! SIGTERM handling) on purpose: the sample services are meant to be read and copied as examples
//! of the health and traffic contract without the operator's crates, and the operator must not
//! depend on a sample kit or on the test cluster, so there is no crate all three could share
//! without inverting that direction. The copies also differ where their users differ (kubesim
//! logs `warn` by default and has no JSON output).

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Calling it twice keeps the first one.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "tracing subscriber already installed");
    }
}
