//! `GET pods/<name>/log`: container logs written by the simulated node's kubelet, read
//! through `node::logs`; `follow=true` streams appended output until the pod is gone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Reply, Request, Shared};
use crate::node::logs::{container_log_path, read_pod_log, LogError, LogOptions};
use crate::registry::ResKey;
use crate::status::ApiError;

/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub fn get(shared: &Arc<Shared>, req: Request) -> Result<Reply, ApiError> {
    let ns = req.namespace().to_string();
    let pod = req.target.name.clone().unwrap_or_default();
    let pods = ResKey {
        group: String::new(),
        plural: "pods".into(),
    };
    let pod_obj = shared
        .store
        .lock()
        .get(&pods, &ns, &pod)
        .ok_or_else(|| ApiError::not_found("", "pods", &pod))?;
    let Some(dir) = shared.node_dir.clone() else {
        return Err(ApiError::not_found("", "pods", &pod).with_message(format!(
            "pod {pod:?} has no logs: no node is running in this kubesim"
        )));
    };
    let parse = |k: &str| req.query.get(k).and_then(|v| v.parse::<usize>().ok());
    let mut opts = LogOptions {
        container: req.query.get("container").map(String::from),
        previous: req.query.flag("previous"),
        tail_lines: parse("tailLines"),
        limit_bytes: parse("limitBytes"),
    };
    if opts.container.is_none() {
        // Name the container when the pod spec has exactly one, as the real server does.
        let containers = pod_obj
            .pointer("/spec/containers")
            .and_then(|c| c.as_array())
            .cloned()
            .unwrap_or_default();
        if let [only] = containers.as_slice() {
            opts.container = only.get("name").and_then(|n| n.as_str()).map(String::from);
        }
    }
    let body = read_pod_log(&dir, &ns, &pod, &opts).map_err(|e| match e {
        LogError::NotFound(m) => ApiError::bad_request(m),
        LogError::ContainerRequired { .. } => ApiError::bad_request(e.to_string()),
        LogError::Io(io) => ApiError::internal(io.to_string()),
    })?;
    if !req.query.flag("follow") {
        return Ok(Reply::Text(200, Bytes::from(body)));
    }
    let Some(container) = opts.container.clone() else {
        return Err(ApiError::bad_request(
            "a container name must be specified to follow a log",
        ));
    };
    let path = container_log_path(&dir, &ns, &pod, &container, false);
    let start = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let (tx, rx) = mpsc::channel(64);
    let shared = shared.clone();
    let shutdown = shared.faults.shutdown_token();
    tokio::spawn(async move {
        if tx.send(Bytes::from(body)).await.is_err() {
            return;
        }
        let mut offset = start;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
            }
            if let Ok(bytes) = tokio::fs::read(&path).await {
                let len = bytes.len() as u64;
                if len < offset {
                    offset = 0;
                }
                if len > offset {
                    let chunk = Bytes::copy_from_slice(&bytes[offset as usize..]);
                    offset = len;
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
            if shared.store.lock().get(&pods, &ns, &pod).is_none() {
                return;
            }
        }
    });
    Ok(Reply::TextStream(rx))
}
