//! Operator errors, split into permanent ones (wait for the spec to change) and transient ones
//! (retry with backoff), each with a fixed metric category.

use crate::validate::InvalidSpec;

/// Everything that can go wrong while reconciling or running the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec passed the schema but cannot be realised.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] InvalidSpec),

    /// The API server refused an object built from the spec (for example an invalid quantity).
    #[error("{kind} {name} rejected by the API server: {message}")]
    Rejected {
        /// Child kind.
        kind: &'static str,
        /// Child name.
        name: String,
        /// The server's message.
        message: String,
    },

    /// An object from the API server lacks a field it must have (name, namespace, uid).
    #[error("object is missing {0}")]
    MissingField(&'static str),

    /// A Kubernetes API call failed.
    #[error("{action} failed: {source}")]
    Kube {
        /// What was being done, e.g. `apply Deployment`.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },

    /// An object could not be (de)serialised.
    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),

    /// The leader lease was lost to another replica.
    #[error("leadership lost: {0}")]
    LeadershipLost(String),

    /// Kubeconfig / in-cluster configuration could not be loaded.
    #[error("kubernetes client configuration: {0}")]
    Config(String),

    /// The metrics/health server could not bind.
    #[error("cannot serve metrics on {addr}: {message}")]
    Bind {
        /// Requested address.
        addr: std::net::SocketAddr,
        /// Reason.
        message: String,
    },
}

impl Error {
    /// Wraps a client error with the action that failed, classifying server rejections of our
    /// own objects (400/422) as permanent.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            action: action.into(),
            source,
        }
    }

    /// Whether retrying cannot help until the MicroService changes.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec(_) | Error::Rejected { .. } | Error::MissingField(_)
        )
    }

    /// Reason of the Warning Event reporting this error (CamelCase, from a fixed set). Distinct
    /// reasons keep different failures from being folded into one Event series.
    pub fn event_reason(&self) -> &'static str {
        match self.category() {
            "invalid_spec" => "InvalidSpec",
            "rejected" => "Rejected",
            "missing_field" => "MissingField",
            "conflict" => "Conflict",
            "throttled" => "Throttled",
            "server_error" => "APIServerError",
            "client_error" => "APIRequestFailed",
            "transport" => "APIUnreachable",
            _ => "ReconcileFailed",
        }
    }

    /// A fixed, bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Rejected { .. } => "rejected",
            Error::MissingField(_) => "missing_field",
            Error::Kube { source, .. } => match status_code(source) {
                Some(409) => "conflict",
                Some(429) => "throttled",
                Some(c) if c >= 500 => "server_error",
                Some(_) => "client_error",
                None => "transport",
            },
            Error::Serialization(_) => "serialization",
            Error::LeadershipLost(_) => "leadership",
            Error::Config(_) => "config",
            Error::Bind { .. } => "bind",
        }
    }
}

/// HTTP status of an API error response, if the error is one.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::FieldError;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("boom", "Reason").with_code(code),
        ))
    }

    /// Invalid specs and rejections are permanent; API hiccups are transient.
    #[test]
    fn permanence() {
        let invalid = Error::InvalidSpec(InvalidSpec {
            errors: vec![FieldError {
                field: "spec.port".into(),
                message: "bad".into(),
            }],
        });
        assert!(invalid.is_permanent());
        assert_eq!(invalid.category(), "invalid_spec");
        for (code, cat) in [
            (409, "conflict"),
            (500, "server_error"),
            (429, "throttled"),
            (404, "client_error"),
        ] {
            let e = Error::kube("apply", api(code));
            assert!(!e.is_permanent());
            assert_eq!(e.category(), cat);
        }
    }
}
