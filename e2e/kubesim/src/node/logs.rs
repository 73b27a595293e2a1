//! Container logs on disk and the read side of `kubectl logs`.
//!
//! The kubelet appends a container's stdout and stderr to
//! `<state_dir>/logs/<namespace>/<pod>/<container>.log`; on restart the previous run's log moves to
//! `<container>.previous.log`. The API server answers `GET .../pods/<name>/log` by calling
//! [`read_pod_log`] with the node's state directory; it needs no running node for that.

use std::path::{Path, PathBuf};

/// Query parameters of the log endpoint kubesim honours.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// `container`; may be omitted when the pod has a single container.
    pub container: Option<String>,
    /// `previous`: the log of the last terminated run.
    pub previous: bool,
    /// `tailLines`.
    pub tail_lines: Option<usize>,
    /// `limitBytes`.
    pub limit_bytes: Option<usize>,
}

/// Why a log cannot be served; map to HTTP as noted.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// 404: the pod never ran on this node or the container has no (previous) log yet.
    #[error("{0}")]
    NotFound(String),
    /// 400: several containers and none named.
    #[error("a container name must be specified for pod {pod}, choose one of: [{choices}]")]
    ContainerRequired { pod: String, choices: String },
    /// 500.
    #[error("reading log: {0}")]
    Io(#[from] std::io::Error),
}

/// The directory holding a pod's container logs.
pub fn pod_log_dir(state_dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    state_dir.join("logs").join(namespace).join(pod)
}

/// The log file of one container run.
pub fn container_log_path(
    state_dir: &Path,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> PathBuf {
    let file = if previous {
        format!("{container}.previous.log")
    } else {
        format!("{container}.log")
    };
    pod_log_dir(state_dir, namespace, pod).join(file)
}

/// Reads a container's log as `kubectl logs` shows it.
pub fn read_pod_log(
    state_dir: &Path,
    namespace: &str,
    pod: &str,
    opts: &LogOptions,
) -> Result<Vec<u8>, LogError> {
    let dir = pod_log_dir(state_dir, namespace, pod);
    let container = match &opts.container {
        Some(c) => c.clone(),
        None => {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|_| LogError::NotFound(format!("pods \"{pod}\" not found")))?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| !n.ends_with(".previous.log"))
                .filter_map(|n| n.strip_suffix(".log").map(str::to_string))
                .collect();
            names.sort();
            match names.len() {
                0 => {
                    return Err(LogError::NotFound(format!(
                        "pods \"{pod}\" has no container logs yet"
                    )))
                }
                1 => names.remove(0),
                _ => {
                    return Err(LogError::ContainerRequired {
                        pod: pod.into(),
                        choices: names.join(" "),
                    })
                }
            }
        }
    };
    let path = container_log_path(state_dir, namespace, pod, &container, opts.previous);
    let mut bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound if opts.previous => LogError::NotFound(format!(
            "previous terminated container \"{container}\" in pod \"{pod}\" not found"
        )),
        std::io::ErrorKind::NotFound => LogError::NotFound(format!(
            "container \"{container}\" in pod \"{pod}\" is waiting to start"
        )),
        _ => LogError::Io(e),
    })?;
    if let Some(n) = opts.tail_lines {
        let text_end = bytes.len();
        let mut start = text_end;
        let mut seen = 0;
        let body = if bytes.ends_with(b"\n") {
            &bytes[..text_end - 1]
        } else {
            &bytes[..]
        };
        for (i, b) in body.iter().enumerate().rev() {
            if *b == b'\n' {
                seen += 1;
                if seen == n {
                    start = i + 1;
                    break;
                }
            }
            start = i;
        }
        if n == 0 {
            start = text_end;
        }
        bytes = bytes[start..].to_vec();
    }
    if let Some(limit) = opts.limit_bytes {
        bytes.truncate(limit);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tails_and_requires_a_container_when_ambiguous() {
        // One container needs no name; tailLines counts lines from the end; two need a name.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = container_log_path(dir.path(), "ns", "web", "app", false);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, "a\nb\nc\n").expect("write");
        let all = read_pod_log(dir.path(), "ns", "web", &LogOptions::default()).expect("log");
        assert_eq!(all, b"a\nb\nc\n");
        let tail = read_pod_log(
            dir.path(),
            "ns",
            "web",
            &LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(tail.expect("tail"), b"b\nc\n");
        std::fs::write(
            container_log_path(dir.path(), "ns", "web", "side", false),
            "x\n",
        )
        .expect("write");
        let err = read_pod_log(dir.path(), "ns", "web", &LogOptions::default());
        assert!(matches!(err, Err(LogError::ContainerRequired { .. })));
        let prev = LogOptions {
            container: Some("app".into()),
            previous: true,
            ..Default::default()
        };
        assert!(matches!(
            read_pod_log(dir.path(), "ns", "web", &prev),
            Err(LogError::NotFound(_))
        ));
    }
}
