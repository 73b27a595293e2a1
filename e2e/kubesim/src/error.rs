//! Errors of starting and using a [`crate::Cluster`].

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubesim only listens on loopback addresses, not {0}")]
    NotLoopback(std::net::IpAddr),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("creating a directory for the kubeconfig: {0}")]
    TempDir(std::io::Error),
    #[error("writing kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid server URL {0}")]
    Url(String),
    #[error("building the client configuration: {0}")]
    ClientConfig(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("building a client: {0}")]
    Client(#[from] kube::Error),
}
