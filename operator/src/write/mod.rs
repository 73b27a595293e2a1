//! The write path: what every write to the API server needs, whoever makes it (the apply and
//! status stages, the rollout's canary, the failover writer, Events).
//!
//! - the leadership gate and deadline ([`Leadership`]): a write is made only while this replica
//!   leads, and is cut at the renew deadline;
//! - the timeout of one write ([`WRITE_TIMEOUT`]);
//! - the mapping of API answers to [`ReconcileError`] ([`map_api_error`]);
//! - the write metrics: the child-write counter ([`count_child_write`]), and for writers with a
//!   counter of their own (the failover writer's `flotilla_failover_writes_total`) the result
//!   label of a gated write ([`result_label`]) and its count ([`count_write`]);
//! - Event publishing ([`publish_event`]);
//! - a span per API call (`api call`, with the call in `action`): inside a reconcile it is a
//!   child of the reconcile's span, so one exported trace shows a reconcile and its writes.
//!
//! It sits at the bottom of the operator: it knows no pipeline stage, no context and no cache,
//! and takes the leadership, metrics and recorder it needs as arguments.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::Event;
use tracing::{warn, Instrument};

use crate::error::{status_code, ReconcileError as Error};
use crate::events::EventSink;
use crate::metrics::Metrics;

mod leadership;

pub use leadership::{Leadership, LeadershipSetter, WriteLapsed};

/// Longest one API write (or the lookup before a create) may take. Each call is also cut at the
/// renew deadline ([`Leadership::write`]), so a hanging API server cannot hold a write past the
/// point where this replica stops leading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(8);

/// What an apply or delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The object did not exist and was created.
    Created,
    /// The object existed and was changed.
    Updated,
    /// Nothing was written (or the server found nothing to change).
    Unchanged,
    /// The object was deleted.
    Deleted,
}

impl Outcome {
    /// Fixed label for metrics and Event reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
        }
    }
}

/// Stops a write when this replica no longer leads (the lease could not be renewed in time).
pub fn ensure_leading(lead: &Leadership) -> Result<(), Error> {
    if lead.is_leading() {
        Ok(())
    } else {
        Err(Error::NotLeading)
    }
}

/// Runs one API call while leading, within [`WRITE_TIMEOUT`] and the renew deadline. The call's
/// own answer is returned as is, for callers that treat some API errors as outcomes (a 404 on a
/// delete); `action` names the call in a timeout error.
pub async fn within_lease<T>(
    lead: &Leadership,
    action: impl FnOnce() -> String,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, Error> {
    let action = action();
    let span = tracing::info_span!("api call", action = %action);
    match lead.write(WRITE_TIMEOUT, call).instrument(span).await {
        Ok(r) => Ok(r),
        Err(WriteLapsed::NotLeading) => Err(Error::NotLeading),
        Err(WriteLapsed::Timeout(after)) => Err(Error::Timeout { action, after }),
    }
}

/// [`within_lease`], mapping the call's error with [`map_api_error`]: `action` (a verb), `kind`
/// and `name` say what was written.
pub async fn call_api<T>(
    lead: &Leadership,
    action: &str,
    kind: &'static str,
    name: &str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    within_lease(lead, || format!("{action} {kind} {name}"), call)
        .await?
        .map_err(|e| map_api_error(action, kind, name, e))
}

/// The 400/422 answers are the server refusing the object itself: permanent. Everything else is
/// classified by [`Error::category`].
pub fn map_api_error(action: &str, kind: &'static str, name: &str, e: kube::Error) -> Error {
    match (&e, status_code(&e)) {
        (kube::Error::Api(s), Some(400 | 422)) => Error::Rejected {
            kind,
            name: name.to_string(),
            message: s.message.clone(),
        },
        _ => Error::kube(format!("{action} {kind} {name}"), e),
    }
}

/// Counts one child write (or the decision not to write) in `flotilla_child_writes_total`.
pub fn count_child_write(metrics: &Metrics, kind: &'static str, outcome: Outcome) {
    metrics
        .child_writes
        .with_label_values(&[kind, outcome.as_str()])
        .inc();
}

/// The result label of a write made through [`Leadership::write`]: `ok`, `error` (the API
/// server refused or failed), `timeout`, `not_leading`.
pub fn result_label<T, E>(r: &Result<Result<T, E>, WriteLapsed>) -> &'static str {
    match r {
        Ok(Ok(_)) => "ok",
        Ok(Err(_)) => "error",
        Err(WriteLapsed::Timeout(_)) => "timeout",
        Err(WriteLapsed::NotLeading) => "not_leading",
    }
}

/// Counts one write of `kind` with its `result` label in a writer's `{kind, result}` counter.
pub fn count_write(counter: &prometheus::IntCounterVec, kind: &'static str, result: &'static str) {
    counter.with_label_values(&[kind, result]).inc();
}

/// Publishes `event` about `regarding` while leading, within [`WRITE_TIMEOUT`]; a failure to
/// publish is logged, never fatal (a replica that stopped leading stays silent).
pub async fn publish_event(
    lead: &Leadership,
    recorder: &EventSink,
    event: &Event,
    regarding: &ObjectReference,
) {
    let publish = recorder.publish(event, regarding);
    match lead.write(WRITE_TIMEOUT, publish).await {
        Ok(Ok(())) | Err(WriteLapsed::NotLeading) => {}
        Ok(Err(e)) => warn!(error = %e, "publishing event failed"),
        Err(e) => warn!(error = %e, "publishing event failed"),
    }
}
