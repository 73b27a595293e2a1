//! gRPC server metrics, in the kit's registry so `/metrics` shows them beside the HTTP and
//! process metrics. Named as the Prometheus gRPC middlewares name them:
//! `grpc_server_handled_total{grpc_service, grpc_method, grpc_code}` and
//! `grpc_server_handling_seconds{grpc_service, grpc_method}`.
//!
//! Every label comes from a fixed set: services and methods are the constants below, the code
//! from a `match` on [`tonic::Code`].

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tonic::Code;

/// The orders API's fully-qualified service name.
pub const ORDERS_SERVICE: &str = "flotilla.orders.v1.Orders";
/// The standard health service's name.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Counters and latency histograms per gRPC method and status code.
#[derive(Clone)]
pub struct GrpcMetrics {
    handled: IntCounterVec,
    handling: HistogramVec,
}

impl std::fmt::Debug for GrpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcMetrics").finish_non_exhaustive()
    }
}

impl GrpcMetrics {
    /// Creates the series and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "gRPC calls completed by the server, by service, method and status code.",
            ),
            &["grpc_service", "grpc_method", "grpc_code"],
        )?;
        let handling = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Time from receiving a gRPC call to producing its response.",
            ),
            &["grpc_service", "grpc_method"],
        )?;
        registry.register(Box::new(handled.clone()))?;
        registry.register(Box::new(handling.clone()))?;
        Ok(Self { handled, handling })
    }

    /// Records one finished call.
    pub fn observe(
        &self,
        service: &'static str,
        method: &'static str,
        code: Code,
        elapsed: Duration,
    ) {
        self.handled
            .with_label_values(&[service, method, code_label(code)])
            .inc();
        self.handling
            .with_label_values(&[service, method])
            .observe(elapsed.as_secs_f64());
    }
}

/// The `grpc_code` label: the code's canonical name, as the gRPC specification spells it in
/// CamelCase (`OK`, `InvalidArgument`, `Unavailable`, ...).
///
/// Flotilla's operator reads these names with its own copy of this table: a sample service
/// depends on no Flotilla crate, and the operator on no sample service. The names are the gRPC
/// specification's, not either side's choice.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_labelled_by_code_name() {
        // One call per code lands in its own series, named by the code, not its number.
        let registry = Registry::new();
        let m = GrpcMetrics::register(&registry).expect("register");
        m.observe(
            ORDERS_SERVICE,
            "GetOrder",
            Code::NotFound,
            Duration::from_millis(2),
        );
        m.observe(
            ORDERS_SERVICE,
            "GetOrder",
            Code::Ok,
            Duration::from_millis(2),
        );
        m.observe(
            ORDERS_SERVICE,
            "GetOrder",
            Code::Ok,
            Duration::from_millis(2),
        );
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buf,
        )
        .expect("encode");
        let text = String::from_utf8(buf).expect("utf8");
        assert!(text.contains(
            r#"grpc_server_handled_total{grpc_code="OK",grpc_method="GetOrder",grpc_service="flotilla.orders.v1.Orders"} 2"#
        ));
        assert!(text.contains(r#"grpc_code="NotFound""#));
    }
}
