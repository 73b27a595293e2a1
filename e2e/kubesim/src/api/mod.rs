//! The resource API: turns a parsed request into store operations with the real API
//! server's semantics. Everything here is synchronous under the store lock, except watches,
//! which are set up under the lock and then stream from a task.

mod delete;
mod eviction;
mod logs;
mod read;
mod scale;
pub mod watch;
mod write;

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::faults::Faults;
use crate::registry::ResourceDef;
use crate::request::{Query, Target};
use crate::status::ApiError;
use crate::store::Store;

pub use delete::collect_garbage;
pub use write::namespaces_key;

/// State shared by every connection of one cluster.
pub struct Shared {
    pub store: Store,
    /// Static tokens and the ServiceAccount token key (TokenRequest works on every cluster).
    pub auth: crate::auth::Authenticator,
    /// Whether requests must authenticate (401) and pass RBAC (403). Off, every request is
    /// the admin's unless it impersonates someone.
    pub secure: bool,
    pub faults: Faults,
    /// The simulated node's state directory, where container logs live (see `node::logs`).
    pub node_dir: Option<std::path::PathBuf>,
}

/// A resource request after routing.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub target: Target,
    pub query: Query,
    pub content_type: String,
    pub accept: String,
    pub user_agent: String,
    pub body: Bytes,
    /// Warnings for the response's `Warning` headers (shared with the server, which reads
    /// them after the handler returns).
    pub warnings: Warnings,
}

/// Warnings collected while handling one request.
#[derive(Debug, Clone, Default)]
pub struct Warnings(Arc<std::sync::Mutex<Vec<String>>>);

impl Warnings {
    pub fn push(&self, w: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(w);
        }
    }

    pub fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// What a handler answers.
pub enum Reply {
    Json(u16, Value),
    /// Plain text (container logs).
    Text(u16, Bytes),
    /// Plain text streamed until the channel closes (`kubectl logs -f`).
    TextStream(mpsc::Receiver<Bytes>),
    /// A watch: newline-delimited JSON events until the channel closes.
    Stream(mpsc::Receiver<Bytes>),
}

impl Request {
    /// The field manager of a write: `fieldManager` or derived from the user agent, as the
    /// real server derives it.
    pub fn manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        let ua = self.user_agent.split('/').next().unwrap_or("").trim();
        if ua.is_empty() {
            "unknown".to_string()
        } else {
            ua.to_string()
        }
    }

    /// Whether the client asked for a `meta.k8s.io` Table.
    pub fn wants_table(&self) -> bool {
        self.accept
            .split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    }

    /// Whether the client asked for `meta.k8s.io` PartialObjectMetadata: objects reduced to
    /// their metadata, as kube's `metadata_watcher` and client-go's metadata informers ask for
    /// (`as=PartialObjectMetadata` on get and watch, `as=PartialObjectMetadataList` on list).
    pub fn wants_metadata(&self) -> bool {
        self.accept
            .split(',')
            .next()
            .is_some_and(|first| first.contains("as=PartialObjectMetadata"))
    }

    pub fn namespace(&self) -> &str {
        self.target.namespace.as_deref().unwrap_or("")
    }
}

/// Current time in the RFC 3339 seconds form Kubernetes uses.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Dispatches a resource request to its verb.
pub fn handle(shared: &Arc<Shared>, req: Request) -> Result<Reply, ApiError> {
    let def = {
        let st = shared.store.lock();
        st.registry
            .lookup(&req.target.group, &req.target.version, &req.target.plural)
            .ok_or_else(ApiError::no_route)?
    };
    if def.namespaced != req.target.namespace.is_some() && req.target.name.is_some() {
        if def.namespaced {
            // A namespaced object addressed without a namespace.
            return Err(ApiError::no_route());
        }
        return Err(ApiError::no_route());
    }
    let sub = req.target.subresource.clone();
    match (sub.as_deref(), &req.method) {
        (None, _) | (Some("status"), _) => {}
        (Some("scale"), _) if def.scale.is_some() => return scale::handle(shared, &def, req),
        (Some("log"), &Method::GET) if def.plural == "pods" && def.group.is_empty() => {
            return logs::get(shared, req)
        }
        (Some("binding"), &Method::POST) if def.plural == "pods" && def.group.is_empty() => {
            return scale::bind(shared, &def, req)
        }
        (Some("eviction"), m) if def.plural == "pods" && def.group.is_empty() => {
            if m != Method::POST {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource ({m})"
                )));
            }
            return eviction::evict(shared, &def, &req);
        }
        (Some("token"), &Method::POST)
            if def.plural == "serviceaccounts" && def.group.is_empty() =>
        {
            let body = parse_body(&req, &def)?;
            let st = shared.store.lock();
            let name = req.target.name.as_deref().unwrap_or("");
            let out = crate::auth::token_request(&shared.auth, &st, req.namespace(), name, &body)?;
            return Ok(Reply::Json(201, out));
        }
        (
            Some(
                other @ ("exec"
                | "attach"
                | "portforward"
                | "proxy"
                | "ephemeralcontainers"
                | "resize"),
            ),
            _,
        ) if def.plural == "pods" && def.group.is_empty() => {
            return Err(ApiError::unsupported(format!(
                "the pods/{other} subresource (processes are not reachable through the API server)"
            )))
        }
        (Some(other), _) => {
            return Err(ApiError::no_route().with_message(format!(
                "the server could not find the requested resource ({other} subresource)"
            )))
        }
    }
    if sub.as_deref() == Some("status") && !def.status {
        return Err(ApiError::no_route());
    }
    let has_name = req.target.name.is_some();
    match (&req.method, has_name) {
        (&Method::GET, true) => read::get(shared, &def, &req),
        (&Method::GET, false) if req.query.flag("watch") => watch::start(shared, &def, &req),
        (&Method::GET, false) => read::list(shared, &def, &req),
        (&Method::POST, false) => write::create(shared, &def, &req),
        (&Method::PUT, true) => write::update(shared, &def, &req),
        (&Method::PATCH, true) => write::patch(shared, &def, &req),
        (&Method::DELETE, true) => delete::delete(shared, &def, &req),
        (&Method::DELETE, false) => delete::delete_collection(shared, &def, &req),
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}

/// Parses a JSON (or YAML) request body; other media types (protobuf, CBOR) get 415 so
/// clients fall back to JSON.
fn parse_body(req: &Request, def: &ResourceDef) -> Result<Value, ApiError> {
    let ct = req.content_type.split(';').next().unwrap_or("").trim();
    let unknown = |e: String| {
        ApiError::bad_request(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({} {}: {e})",
            def.kind, req.target.plural
        ))
    };
    match ct {
        "" | "application/json" | "*/*" => serde_json::from_slice(&req.body).map_err(|e| unknown(e.to_string())),
        "application/yaml" => serde_norway::from_slice(&req.body).map_err(|e| unknown(e.to_string())),
        "application/vnd.kubernetes.protobuf" => crate::proto::decode(&req.body).map_err(|e| {
            ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({e})"
            ))
        }),
        _ => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct:?})"
        ))),
    }
}

impl ApiError {
    pub fn with_message(mut self, m: String) -> Self {
        self.message = m;
        self
    }
}
