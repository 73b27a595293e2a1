//! The HTTP front: hyper connection handling, routing of discovery, OpenAPI, admin and
//! resource paths, fault injection, and turning replies and errors into responses.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Reply, Shared};
use crate::auth::UserInfo;
use crate::faults::{FaultRule, LatencyRule};
use crate::request::{parse_path, Query};
use crate::status::ApiError;
use crate::{discovery, gate, openapi};

type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted (the real server's limit is 3 MiB per object; lists of
/// patches stay well under this).
const MAX_BODY: usize = 32 * 1024 * 1024;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(secs) = e.details.retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

fn stream_response(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    stream_response_as(rx, "application/json")
}

fn stream_response_as(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    r
}

/// Serves connections from `listener` until `shutdown` is cancelled; then closes them all.
/// With `tls`, every connection is TLS and a verified client certificate authenticates its
/// subject for all requests on that connection.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    addr: String,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let addr = addr.clone();
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    match acceptor {
                        None => serve_connection(stream, shared, addr, None).await,
                        Some(acceptor) => {
                            // A client that never finishes its handshake must not hold a task.
                            let handshake = tokio::time::timeout(
                                std::time::Duration::from_secs(10),
                                acceptor.accept(stream),
                            );
                            let Ok(Ok(tls)) = handshake.await else { return };
                            let peer = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(crate::tls::identity_of);
                            serve_connection(tls, shared, addr, peer).await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>, addr: String, peer: Option<UserInfo>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let addr = addr.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(route(shared, &addr, peer.as_ref().as_ref(), req).await) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, svc)
        .await;
}

fn verb(method: &Method, has_name: bool, watch: bool) -> &'static str {
    match (method, has_name) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

async fn route(
    shared: Arc<Shared>,
    addr: &str,
    peer: Option<&UserInfo>,
    req: hyper::Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("request body: {e}"),
            ))
        }
    };
    let path = parts.uri.path().to_string();
    let query = Query::parse(parts.uri.query());
    let header = |h: header::HeaderName| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let trimmed = path.trim_end_matches('/');
    let segs: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
    let registry = || shared.store.lock().registry.clone();
    // Health and version stay open to anonymous clients, as a real cluster's
    // system:public-info-viewer role keeps them.
    match segs.as_slice() {
        ["version"] => return json_response(200, &discovery::version()),
        ["healthz"] | ["readyz"] | ["livez"] => {
            let mut r = Response::new(full("ok"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return r;
        }
        _ => {}
    }
    let user = match gate::identify(&shared, &parts.headers, peer) {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    let is_resource_path = matches!(segs.as_slice(), ["api", _, _, ..] | ["apis", _, _, _, ..]);
    if !is_resource_path {
        if let Err(e) =
            gate::authorize(&shared, &user, &gate::path_attributes(&parts.method, &path))
        {
            return error_response(&e);
        }
    }
    match segs.as_slice() {
        ["api"] => return json_response(200, &discovery::core_versions(addr)),
        ["apis"] => return json_response(200, &discovery::groups(&registry())),
        ["api", v] => {
            return match discovery::resources(&registry(), "", v) {
                Some(d) => json_response(200, &d),
                None => error_response(&ApiError::no_route()),
            }
        }
        ["apis", g] => {
            return match discovery::group(&registry(), g) {
                Some(d) => json_response(200, &d),
                None => error_response(&ApiError::no_route()),
            }
        }
        ["apis", g, v] => {
            return match discovery::resources(&registry(), g, v) {
                Some(d) => json_response(200, &d),
                None => error_response(&ApiError::no_route()),
            }
        }
        ["openapi", "v2"] => return json_response(200, &openapi::v2(&registry())),
        ["openapi", "v3"] => return json_response(200, &openapi::v3_index(&registry())),
        ["openapi", "v3", rest @ ..] => {
            return match openapi::v3_doc(&registry(), &rest.join("/")) {
                Some(d) => json_response(200, &d),
                None => error_response(&ApiError::no_route()),
            }
        }
        ["kubesim", rest @ ..] => return admin(&shared, &parts.method, rest, &body),
        _ => {}
    }
    let target = {
        let reg = registry();
        parse_path(&path, |g, p| {
            reg.all()
                .any(|d| d.group == g && d.plural == p && d.namespaced)
        })
    };
    let Some(target) = target else {
        return error_response(&ApiError::no_route());
    };
    let attrs = gate::resource_attributes(&parts.method, &target, query.flag("watch"));
    if let Err(e) = gate::authorize(&shared, &user, &attrs) {
        return error_response(&e);
    }
    if target.group == "authorization.k8s.io"
        && parts.method == Method::POST
        && matches!(
            target.plural.as_str(),
            "selfsubjectaccessreviews" | "subjectaccessreviews"
        )
    {
        return match gate::access_review(
            &shared,
            &user,
            &target.plural,
            &header(header::CONTENT_TYPE),
            &body,
        ) {
            Ok(v) => json_response(201, &v),
            Err(e) => error_response(&e),
        };
    }
    let v = verb(&parts.method, target.name.is_some(), query.flag("watch"));
    let resource = match &target.subresource {
        Some(s) => format!("{}/{s}", target.plural),
        None => target.plural.clone(),
    };
    let (delay, fault) = shared.faults.check(v, &resource, &body);
    if let Some(d) = delay {
        shared.faults.delay(d).await;
    }
    if let Some(e) = fault {
        return error_response(&e);
    }
    let request = api::Request {
        method: parts.method.clone(),
        target,
        query,
        content_type: header(header::CONTENT_TYPE),
        accept: header(header::ACCEPT),
        user_agent: header(header::USER_AGENT),
        body,
        warnings: api::Warnings::default(),
    };
    let warnings = request.warnings.clone();
    let mut response = match api::handle(&shared, request) {
        Ok(Reply::Json(code, v)) => json_response(code, &v),
        Ok(Reply::Stream(rx)) => stream_response(rx),
        Ok(Reply::TextStream(rx)) => stream_response_as(rx, "text/plain"),
        Ok(Reply::Text(code, bytes)) => {
            let mut r = Response::new(full(bytes));
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
        Err(e) => error_response(&e),
    };
    for w in warnings.take() {
        let text = format!("299 - {}", serde_json::Value::String(w));
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// The admin API: `POST /kubesim/faults` (a [`FaultRule`]), `POST /kubesim/latency` (a
/// [`LatencyRule`]), `POST /kubesim/drop-watches`, `DELETE /kubesim/faults` (clear all),
/// `GET /kubesim/faults` (current rules).
fn admin(shared: &Arc<Shared>, method: &Method, rest: &[&str], body: &Bytes) -> Response<Body> {
    let injector = crate::faults::FaultInjector {
        faults: shared.clone(),
    };
    match (method, rest) {
        (&Method::GET, ["faults"]) => json_response(200, &shared.faults.describe()),
        (&Method::DELETE, ["faults"]) => {
            injector.clear();
            json_response(200, &json!({"cleared": true}))
        }
        (&Method::POST, ["faults"]) => match serde_json::from_slice::<FaultRule>(body) {
            Ok(rule) => {
                injector.fail(rule);
                json_response(201, &shared.faults.describe())
            }
            Err(e) => error_response(&ApiError::bad_request(format!("invalid fault rule: {e}"))),
        },
        (&Method::POST, ["latency"]) => match serde_json::from_slice::<LatencyRule>(body) {
            Ok(rule) => {
                injector.add_latency(rule);
                json_response(201, &shared.faults.describe())
            }
            Err(e) => error_response(&ApiError::bad_request(format!("invalid latency rule: {e}"))),
        },
        (&Method::POST, ["drop-watches"]) => {
            injector.drop_watches();
            json_response(200, &json!({"dropped": true}))
        }
        _ => error_response(&ApiError::no_route()),
    }
}
