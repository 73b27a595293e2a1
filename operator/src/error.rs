//! Errors of one reconcile. A [`ReconcileError`] belongs to one MicroService: its [`Category`]
//! decides the metric label, the Event reason and whether retrying can help. What ends the
//! operator is [`crate::RunError`], next to [`crate::run`]; leader election and the HTTP server
//! have their own error types ([`crate::leader::LeaseError`], [`crate::http::BindError`]). Nothing
//! here knows a pipeline stage's machinery: the stages' errors convert into this one.

use crate::admission::PolicyRefusal;
use crate::validate::InvalidSpec;

/// Why a reconcile failed, from a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The spec passed the schema but cannot be realised.
    InvalidSpec,
    /// The operator's admission policy does not allow what the spec asks for.
    PolicyRefused,
    /// The API server refused an object built from the spec (400 or 422).
    Rejected,
    /// A child's name is taken by an object Flotilla does not control.
    ChildConflict,
    /// An object from the API server lacks a field it must have.
    MissingField,
    /// 403 from the API server: the operator's RBAC does not grant the request. Reported in
    /// status (the message names the verb and resource) and retried, since an admin can fix the
    /// grant without the MicroService changing.
    Forbidden,
    /// 409 from the API server (someone else wrote first).
    Conflict,
    /// 429 from the API server.
    Throttled,
    /// 5xx from the API server.
    ServerError,
    /// Any other 4xx from the API server.
    ClientError,
    /// No HTTP answer at all (connection refused, reset, TLS).
    Transport,
    /// A call did not finish within its timeout.
    Timeout,
    /// An object could not be (de)serialised.
    Serialization,
    /// This replica stopped leading before the write.
    NotLeading,
}

impl Category {
    /// Fixed label for `flotilla_reconcile_failures_total{category}`.
    pub fn label(self) -> &'static str {
        match self {
            Category::InvalidSpec => "invalid_spec",
            Category::PolicyRefused => "policy_refused",
            Category::Rejected => "rejected",
            Category::ChildConflict => "child_conflict",
            Category::MissingField => "missing_field",
            Category::Forbidden => "forbidden",
            Category::Conflict => "conflict",
            Category::Throttled => "throttled",
            Category::ServerError => "server_error",
            Category::ClientError => "client_error",
            Category::Transport => "transport",
            Category::Timeout => "timeout",
            Category::Serialization => "serialization",
            Category::NotLeading => "not_leading",
        }
    }

    /// Reason of the Warning Event reporting the failure (CamelCase). Distinct reasons keep
    /// different failures from being folded into one Event series.
    pub fn event_reason(self) -> &'static str {
        match self {
            Category::InvalidSpec => flotilla_crds::reasons::INVALID_SPEC,
            Category::PolicyRefused => flotilla_crds::reasons::POLICY_REFUSED,
            Category::Rejected => "Rejected",
            Category::ChildConflict => flotilla_crds::reasons::CHILD_CONFLICT,
            Category::MissingField => "MissingField",
            Category::Forbidden => flotilla_crds::reasons::FORBIDDEN,
            Category::Conflict => "Conflict",
            Category::Throttled => "Throttled",
            Category::ServerError => "APIServerError",
            Category::ClientError => "APIRequestFailed",
            Category::Transport => "APIUnreachable",
            Category::Timeout => "APITimeout",
            Category::Serialization => "ReconcileFailed",
            Category::NotLeading => "NotLeading",
        }
    }

    /// Whether retrying cannot help until the MicroService (or the conflicting object) changes.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Category::InvalidSpec
                | Category::PolicyRefused
                | Category::Rejected
                | Category::ChildConflict
                | Category::MissingField
        )
    }
}

/// Everything that can go wrong while reconciling one MicroService.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The spec passed the schema but cannot be realised.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] InvalidSpec),

    /// The operator's admission policy does not allow what the spec asks for.
    #[error("refused by the operator's policy: {0}")]
    PolicyRefused(#[from] PolicyRefusal),

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

    /// A child's name is taken by an object without Flotilla's controller reference for this
    /// MicroService; Flotilla leaves it alone.
    #[error("{kind} {name} already exists and is not controlled by this MicroService; Flotilla leaves it untouched (rename the MicroService or remove the object)")]
    ChildConflict {
        /// Child kind.
        kind: &'static str,
        /// Child name.
        name: String,
    },

    /// An object from the API server lacks a field it must have (name, namespace, uid).
    #[error("object is missing {0}")]
    MissingField(&'static str),

    /// A Kubernetes API call failed.
    #[error("{action} failed: {source}")]
    Kube {
        /// What was being done, e.g. `apply Deployment users`.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },

    /// A Kubernetes API call did not finish in time.
    #[error("{action} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        action: String,
        /// The timeout.
        after: std::time::Duration,
    },

    /// An object could not be (de)serialised.
    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),

    /// The write was not made because this replica no longer holds the leader lease.
    #[error("not writing: this replica no longer leads")]
    NotLeading,

    /// A permanent error could not be written to the status. Counted and reported as the
    /// original error, but retried so that the status eventually says why.
    #[error("{reported} (and writing it to the status failed: {status_error})")]
    NotReported {
        /// The error the status write was reporting.
        reported: Box<ReconcileError>,
        /// Why the status write failed.
        status_error: Box<ReconcileError>,
    },
}

impl ReconcileError {
    /// Wraps a client error with the action that failed.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        ReconcileError::Kube {
            action: action.into(),
            source,
        }
    }

    /// The category: metric label, Event reason, permanence.
    pub fn category(&self) -> Category {
        match self {
            ReconcileError::InvalidSpec(_) => Category::InvalidSpec,
            ReconcileError::PolicyRefused(_) => Category::PolicyRefused,
            ReconcileError::Rejected { .. } => Category::Rejected,
            ReconcileError::ChildConflict { .. } => Category::ChildConflict,
            ReconcileError::MissingField(_) => Category::MissingField,
            ReconcileError::Kube { source, .. } => match status_code(source) {
                Some(403) => Category::Forbidden,
                Some(409) => Category::Conflict,
                Some(429) => Category::Throttled,
                Some(c) if c >= 500 => Category::ServerError,
                Some(_) => Category::ClientError,
                None => Category::Transport,
            },
            ReconcileError::Timeout { .. } => Category::Timeout,
            ReconcileError::Serialization(_) => Category::Serialization,
            ReconcileError::NotLeading => Category::NotLeading,
            ReconcileError::NotReported { reported, .. } => reported.category(),
        }
    }

    /// The error for a person reading the MicroService's status or Events: like `Display`, but
    /// an API error is given as the server's message and reason only.
    pub fn message(&self) -> String {
        match self {
            ReconcileError::Kube {
                action,
                source: kube::Error::Api(s),
            } => format!("{action} failed: {} ({})", s.message, s.reason),
            other => other.to_string(),
        }
    }

    /// Whether the error belongs in the MicroService's status (as `Degraded`, with its message):
    /// permanent errors, and refusals by RBAC, which only an admin can fix.
    pub fn is_reported(&self) -> bool {
        self.is_permanent() || self.category() == Category::Forbidden
    }

    /// Whether retrying cannot help until the MicroService changes. An error whose status
    /// write failed is retried, so the status catches up.
    pub fn is_permanent(&self) -> bool {
        match self {
            ReconcileError::NotReported { .. } => false,
            other => other.category().is_permanent(),
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

    fn invalid() -> ReconcileError {
        ReconcileError::InvalidSpec(InvalidSpec {
            errors: vec![FieldError {
                field: "spec.port".into(),
                message: "bad".into(),
            }],
        })
    }

    /// Invalid specs, rejections and child conflicts are permanent; API hiccups are transient.
    #[test]
    fn permanence() {
        let invalid = invalid();
        assert!(invalid.is_permanent());
        assert_eq!(invalid.category(), Category::InvalidSpec);
        let conflict = ReconcileError::ChildConflict {
            kind: "Deployment",
            name: "users".into(),
        };
        assert!(conflict.is_permanent());
        assert_eq!(conflict.category().event_reason(), "ChildConflict");
        for (code, cat) in [
            (409, Category::Conflict),
            (500, Category::ServerError),
            (429, Category::Throttled),
            (404, Category::ClientError),
            (403, Category::Forbidden),
        ] {
            let e = ReconcileError::kube("apply", api(code));
            assert!(!e.is_permanent());
            assert_eq!(e.category(), cat);
        }
    }

    /// A refusal by the admission policy is permanent (the policy changes only with a restart,
    /// which reconciles everything again) and has its own metric label and Event reason.
    #[test]
    fn policy_refusal_is_permanent() {
        let e = ReconcileError::PolicyRefused(PolicyRefusal {
            refusals: vec![crate::admission::Refusal {
                field: "spec.image",
                value: "\"evil/x:1\"".into(),
                allowed: "image prefixes shop/".into(),
            }],
        });
        assert_eq!(e.category(), Category::PolicyRefused);
        assert!(e.is_permanent() && e.is_reported());
        assert_eq!(e.category().label(), "policy_refused");
        assert_eq!(e.category().event_reason(), "PolicyRefused");
        assert_eq!(
            e.message(),
            "refused by the operator's policy: spec.image: \"evil/x:1\" is not allowed by the operator's policy (allowed image prefixes shop/)"
        );
    }

    /// A refusal by RBAC is reported in status (with the server's message, which names the verb
    /// and resource) but retried: an admin can grant the verb without the MicroService changing.
    #[test]
    fn forbidden_is_reported_and_retried() {
        let e = ReconcileError::kube("apply Service users", api(403));
        assert_eq!(e.category(), Category::Forbidden);
        assert!(e.is_reported() && !e.is_permanent());
        assert_eq!(e.category().event_reason(), "Forbidden");
        assert_eq!(e.message(), "apply Service users failed: boom (Reason)");
    }

    /// A failed status write keeps the category of the error it was reporting, and is retried.
    #[test]
    fn status_write_failure_does_not_mask_the_error() {
        let e = ReconcileError::NotReported {
            reported: Box::new(invalid()),
            status_error: Box::new(ReconcileError::kube("apply status", api(500))),
        };
        assert_eq!(e.category(), Category::InvalidSpec);
        assert_eq!(e.category().event_reason(), "InvalidSpec");
        assert!(!e.is_permanent());
        assert!(e.to_string().contains("spec.port"), "{e}");
    }
}
