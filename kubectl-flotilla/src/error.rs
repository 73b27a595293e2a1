//! What can go wrong, worded for the person at the terminal: one line each, and an exit code
//! that tells a script "refused or failed" (1) from "timed out" (2) and "bad usage" (clap's 2).

use std::time::Duration;

/// A command that could not do what was asked. Nothing was changed unless the message says so.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig or in-cluster configuration, or one that names a missing context.
    #[error("cannot reach a cluster: {0}")]
    Config(String),

    /// The MicroService does not exist in that namespace.
    #[error("MicroService {name:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },

    /// The user's RBAC does not allow the call.
    #[error("forbidden: {0}")]
    Forbidden(String),

    /// The request makes no sense in the object's current state (for example a retry when no
    /// release was rolled back).
    #[error("{0}")]
    Refused(String),

    /// The watched release ended badly (`status`).
    #[error("{0}")]
    Failed(String),

    /// `status --timeout` ran out before the release finished.
    #[error("timed out after {}: {what}", humantime(*.after))]
    TimedOut { after: Duration, what: String },

    /// `dashboard` cannot listen on its address (in use, not this machine's, a privileged port).
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },

    /// Any other answer from the API server, or a broken connection.
    #[error("{0}")]
    Api(kube::Error),
}

impl Error {
    /// The process's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::TimedOut { .. } => 2,
            _ => 1,
        }
    }

    /// Maps an API error on the MicroService `name`: 404 and 403 get their own words.
    pub fn on(namespace: &str, name: &str, e: kube::Error) -> Error {
        match &e {
            kube::Error::Api(s) if s.code == 404 => Error::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            kube::Error::Api(s) if s.code == 403 => Error::Forbidden(s.message.clone()),
            _ => Error::Api(e),
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 403 => Error::Forbidden(s.message.clone()),
            _ => Error::Api(e),
        }
    }
}

/// `90s` → `1m30s`, as kubectl prints durations.
pub fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 if s.is_multiple_of(60) => format!("{}m", s / 60),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}
