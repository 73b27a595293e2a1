//! watch: initial events or a replay from a resourceVersion, then live changes, with
//! bookmarks, `timeoutSeconds`, `410 Gone` for versions older than the kept history, and
//! selector transitions reported as ADDED/DELETED like the real watch cache does, and objects
//! reduced to their metadata when the client asks for PartialObjectMetadata.
//!
//! The starting point is fixed under the store lock (subscribe + snapshot together), then a
//! task streams newline-delimited JSON events into the response body. A watcher that falls
//! more than the broadcast buffer behind is disconnected; kube-rs and kubectl then re-list.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::read::{metadata_only, present, Selectors};
use super::{Reply, Request, Shared};
use crate::registry::{ResKey, ResourceDef};
use crate::status::ApiError;
use crate::store::{Change, EventType};
use crate::table;

/// Default watch length when the client gives no `timeoutSeconds` (the real server picks
/// 30–60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
/// Events buffered per watch response before the writer waits for the socket.
const STREAM_BUFFER: usize = 256;

struct Watch {
    def: Arc<ResourceDef>,
    key: ResKey,
    version: String,
    ns: Option<String>,
    sel: Selectors,
    table: bool,
    include_object: Option<String>,
    /// Objects reduced to their metadata (PartialObjectMetadata).
    metadata: bool,
    /// Whether stored objects can be sent as stored (no apiVersion rewrite, no Table).
    raw: bool,
}

impl Watch {
    fn in_scope(&self, ch: &Change) -> bool {
        ch.res == self.key && self.ns.as_ref().is_none_or(|n| *n == ch.ns)
    }

    fn line(&self, type_: &str, obj: &Arc<Value>, encoded: Option<&Bytes>) -> Bytes {
        if self.raw {
            if let Some(enc) = encoded {
                let mut out = Vec::with_capacity(enc.len() + 32);
                out.extend_from_slice(b"{\"type\":\"");
                out.extend_from_slice(type_.as_bytes());
                out.extend_from_slice(b"\",\"object\":");
                out.extend_from_slice(enc);
                out.extend_from_slice(b"}\n");
                return Bytes::from(out);
            }
        }
        let object = if self.metadata {
            metadata_only(obj)
        } else if self.table {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            table::table(
                &self.def,
                &self.version,
                std::slice::from_ref(obj),
                rv,
                self.include_object.as_deref(),
            )
        } else {
            present(&self.def, &self.version, obj)
        };
        let mut s = json!({"type": type_, "object": object}).to_string();
        s.push('\n');
        Bytes::from(s)
    }

    /// The event this change produces for this watch, if any.
    fn event(&self, ch: &Change) -> Option<Bytes> {
        if !self.in_scope(ch) {
            return None;
        }
        let now_matches = self.sel.matches(&ch.object);
        let before = ch.prev.as_ref().is_some_and(|p| self.sel.matches(p));
        let type_ = match (ch.type_, before, now_matches) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Deleted, true, _) => "DELETED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            _ => return None,
        };
        Some(self.line(type_, &ch.object, Some(ch.encoded())))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = if self.metadata {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
        } else {
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(&self.version), "metadata": meta})
        };
        let mut s = json!({"type": "BOOKMARK", "object": object}).to_string();
        s.push('\n');
        Bytes::from(s)
    }
}

fn error_line(e: &ApiError) -> Bytes {
    let mut s = json!({"type": "ERROR", "object": e.to_status()}).to_string();
    s.push('\n');
    Bytes::from(s)
}

pub fn start(shared: &Arc<Shared>, def: &ResourceDef, req: &Request) -> Result<Reply, ApiError> {
    let sel = Selectors::from(req)?;
    let timeout = match req.query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let bookmarks = req.query.flag("allowWatchBookmarks");
    let send_initial = req.query.get("sendInitialEvents") == Some("true");
    let rv_param = req.query.get("resourceVersion").filter(|r| !r.is_empty());
    let table = req.wants_table();
    let metadata = req.wants_metadata();
    let version = req.target.version.clone();
    let raw = !table && !metadata && def.preferred_version() == version;
    let w = Watch {
        def: Arc::new(def.clone()),
        key: def.key(),
        version,
        ns: req.target.namespace.clone(),
        sel,
        table,
        include_object: req.query.get("includeObject").map(String::from),
        metadata,
        raw,
    };
    let from: Option<u64> = match rv_param {
        None | Some("0") => None,
        Some(r) => Some(
            r.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {r:?}")))?,
        ),
    };

    let mut lines: Vec<Bytes> = Vec::new();
    let (rx, start_rv) = {
        let st = shared.store.lock();
        let rx = st.subscribe();
        let current = st.current_rv();
        match from {
            Some(rv) if !send_initial => match st.changes_since(&w.key, rv) {
                Some(changes) => {
                    lines.extend(changes.iter().filter_map(|c| w.event(c)));
                }
                None => {
                    let e = ApiError::gone(format!(
                        "too old resource version: {rv} ({})",
                        st.oldest_rv()
                    ));
                    lines.push(error_line(&e));
                    drop(st);
                    return Ok(stream_lines(lines));
                }
            },
            _ => {
                for obj in st.list(&w.key, w.ns.as_deref()) {
                    if w.sel.matches(&obj) {
                        lines.push(w.line("ADDED", &obj, None));
                    }
                }
                if send_initial {
                    lines.push(w.bookmark(current, true));
                }
            }
        }
        (rx, current)
    };

    let (tx, body) = mpsc::channel(STREAM_BUFFER);
    let mut drop_signal = shared.faults.watch_drops();
    let shutdown = shared.faults.shutdown_token();
    tokio::spawn(async move {
        for l in lines {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let mut rx: broadcast::Receiver<Arc<Change>> = rx;
        let mut last_rv = start_rv;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ch) => {
                        if ch.rv <= last_rv {
                            continue;
                        }
                        last_rv = ch.rv;
                        if let Some(line) = w.event(&ch) {
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    if tx.send(w.bookmark(last_rv, false)).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = drop_signal.changed() => return,
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Reply::Stream(body))
}

fn stream_lines(lines: Vec<Bytes>) -> Reply {
    let (tx, body) = mpsc::channel(lines.len().max(1));
    for l in lines {
        let _ = tx.try_send(l);
    }
    Reply::Stream(body)
}
