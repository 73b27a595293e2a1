//! A real OTLP trace receiver for tests: `POST /v1/traces` (OTLP over HTTP, protobuf) on one
//! port and the `TraceService` gRPC service on another. It records every span it is sent, with
//! the `service.name` of its resource, for tests to check one trace across processes.
//!
//! It answers every export with success and keeps everything in memory; it is a test double of
//! a collector, not a collector.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One span as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting process.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// 16-byte trace id, hex.
    pub trace_id: String,
    /// 8-byte span id, hex.
    pub span_id: String,
    /// The parent's span id, hex; empty for a root span.
    pub parent_span_id: String,
    /// Its string-valued attributes (the `tracing` fields), by key.
    pub attributes: BTreeMap<String, String>,
    /// How it came: `"http"` or `"grpc"`.
    pub protocol: &'static str,
}

impl ReceivedSpan {
    /// The string attribute `key`, or "".
    pub fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

#[derive(Debug, Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    exports: usize,
}

type Shared = Arc<Mutex<Store>>;

fn record(store: &Shared, request: &ExportTraceServiceRequest, protocol: &'static str) {
    let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
    store.exports += 1;
    for resource_spans in &request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            store.spans.push(ReceivedSpan {
                service: service.clone(),
                name: span.name.clone(),
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: span
                    .attributes
                    .iter()
                    .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                        _ => None,
                    })
                    .collect(),
                protocol,
            });
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The receiver; its servers stop when it is dropped.
#[derive(Debug)]
pub struct Receiver {
    http: SocketAddr,
    grpc: SocketAddr,
    store: Shared,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Receiver {
    /// Binds both ports on loopback and starts serving.
    pub async fn start() -> Result<Self> {
        let store = Shared::default();
        let http_listener = TcpListener::bind("127.0.0.1:0").await?;
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await?;
        let http = http_listener.local_addr()?;
        let grpc = grpc_listener.local_addr()?;
        let tasks = vec![
            tokio::spawn(serve_http(http_listener, store.clone())),
            tokio::spawn(serve_grpc(grpc_listener, store.clone())),
        ];
        Ok(Self {
            http,
            grpc,
            store,
            tasks,
        })
    }

    /// Base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`
    /// (the exporter appends `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// URL for `OTEL_EXPORTER_OTLP_ENDPOINT` with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        store.spans.clone()
    }

    /// Export requests received so far, on either port, empty ones included.
    pub fn exports(&self) -> usize {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        store.exports
    }
}

async fn serve_http(listener: TcpListener, store: Shared) {
    while let Ok((stream, _)) = listener.accept().await {
        let store = store.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let store = store.clone();
                async move {
                    let status = if req.method() != http::Method::POST
                        || req.uri().path() != "/v1/traces"
                    {
                        http::StatusCode::NOT_FOUND
                    } else {
                        match req.into_body().collect().await {
                            Ok(body) => match ExportTraceServiceRequest::decode(body.to_bytes()) {
                                Ok(request) => {
                                    record(&store, &request, "http");
                                    http::StatusCode::OK
                                }
                                Err(_) => http::StatusCode::BAD_REQUEST,
                            },
                            Err(_) => http::StatusCode::BAD_REQUEST,
                        }
                    };
                    let body = ExportTraceServiceResponse::default().encode_to_vec();
                    http::Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

struct Grpc(Shared);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        record(&self.0, request.get_ref(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn serve_grpc(listener: TcpListener, store: Shared) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let _ = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Grpc(store)))
        .serve_with_incoming(incoming)
        .await;
}
