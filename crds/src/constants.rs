//! Names shared by everything that reads or writes MicroServices: the API coordinates, field
//! managers, label and annotation keys, condition types and reasons.
//!
//! Every string that two components must agree on lives here, so it is spelled exactly once.

/// API group of the MicroService resource.
pub const GROUP: &str = "flotilla.rs";
/// API version served and stored.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "flotilla.rs/v1alpha1";
/// Kind of the custom resource.
pub const KIND: &str = "MicroService";
/// Plural resource name (URL path segment).
pub const PLURAL: &str = "microservices";
/// Short name for kubectl (`kubectl get msvc`).
pub const SHORT_NAME: &str = "msvc";
/// Name of the CustomResourceDefinition object.
pub const CRD_NAME: &str = "microservices.flotilla.rs";

/// Field manager of the reconciler for server-side apply (children and its part of the status).
pub const FIELD_MANAGER: &str = "flotilla";
/// Field manager of the failover engine (`status.failover`, its conditions, membership labels).
pub const FAILOVER_FIELD_MANAGER: &str = "flotilla-failover";

/// Label keys and values put on every child object and pod.
pub mod labels {
    /// `app.kubernetes.io/name`: the MicroService name.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/instance`: the MicroService name.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `app.kubernetes.io/managed-by`: always [`MANAGED_BY_VALUE`].
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY`] for everything Flotilla creates.
    pub const MANAGED_BY_VALUE: &str = "flotilla";
    /// `app.kubernetes.io/part-of`: `spec.partOf`, or the namespace when unset.
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    /// Prefix of the traffic membership label; the full key is `serves.flotilla.rs/<name>`.
    pub const SERVES_PREFIX: &str = "serves.flotilla.rs/";
    /// Membership label value: the pod receives the Service's traffic.
    pub const SERVES_TRUE: &str = "true";
    /// Membership label value: the pod has been ejected from the Service's traffic.
    pub const SERVES_FALSE: &str = "false";
    /// Label on the pods (and the Deployment) running a template under guarded-rollout analysis,
    /// with value [`TRACK_CANARY`]; stable pods do not carry it.
    pub const TRACK: &str = "rollout.flotilla.rs/track";
    /// Value of [`TRACK`] on canary pods.
    pub const TRACK_CANARY: &str = "canary";

    /// The traffic membership label key for the MicroService `name`.
    pub fn serves(name: &str) -> String {
        format!("{SERVES_PREFIX}{name}")
    }
}

/// Annotation keys.
pub mod annotations {
    /// Pod-template annotation holding the hash of the rendered config; a config change rolls pods.
    pub const CONFIG_HASH: &str = "flotilla.rs/config-hash";
    /// Pod-template annotation listing a digest per Secret and ConfigMap the container's `env`
    /// references (`Secret/<name>:<digest>,ConfigMap/<name>:<digest>`), over the referenced keys
    /// only; a change of a referenced value rolls the pods. Set only when the operator runs with
    /// `--rollout-on-config-change`.
    pub const CONFIG_DIGEST: &str = "flotilla.rs/config-digest";
    /// Annotation on every child holding the hash of the object Flotilla last applied; with it
    /// the operator can tell "nothing changed" without a write.
    pub const APPLIED_HASH: &str = "flotilla.rs/applied-hash";
    /// MicroService annotation asking a guarded rollout to try a failed template again: set it to
    /// a new value (for example a timestamp) to start another analysis of the same template.
    pub const ROLLOUT_RETRY: &str = "flotilla.rs/rollout-retry";
    /// MicroService annotation asking a guarded rollout to promote the revision under analysis
    /// now: set it to a new value; `status.rollout.promoteToken` acknowledges it.
    pub const ROLLOUT_PROMOTE: &str = "flotilla.rs/rollout-promote";
    /// MicroService annotation asking a guarded rollout to roll the revision under analysis back
    /// now: set it to a new value; `status.rollout.abortToken` acknowledges it.
    pub const ROLLOUT_ABORT: &str = "flotilla.rs/rollout-abort";
    /// MicroService annotation naming a revision (a hash from the revision history) that the
    /// spec is being taken back to: when the spec's template is that revision and the history
    /// records it as good, a guarded rollout makes it stable at once, without an analysis.
    pub const ROLLOUT_UNDO: &str = "flotilla.rs/rollout-undo";
    /// Annotation on the Deployments and canary pods holding the pod-template revision.
    pub const REVISION: &str = "flotilla.rs/revision";
}

/// Condition types in `status.conditions`.
pub mod conditions {
    /// All replicas of the current spec are available and the rollout is complete.
    pub const READY: &str = "Ready";
    /// A rollout is in progress.
    pub const PROGRESSING: &str = "Progressing";
    /// Something prevents the service from working as specified (see the reason).
    pub const DEGRADED: &str = "Degraded";
    /// Traffic of the Service currently goes to the fallback (written by the failover engine).
    pub const FAILED_OVER: &str = "FailedOver";
    /// The failover engine holds its target because traffic flipped too often.
    pub const FLAPPING: &str = "Flapping";

    /// Condition status strings (Kubernetes API conventions).
    pub const TRUE: &str = "True";
    /// Condition status `False`.
    pub const FALSE: &str = "False";
    /// Condition status `Unknown`.
    pub const UNKNOWN: &str = "Unknown";
}

/// The reasons of the Events that matter beyond the cluster: a notification webhook sends them
/// by default, and alerts and dashboards key on them.
pub mod event_reasons {
    /// Traffic of the primary Service went to the fallback's pods.
    pub const FAILED_OVER: &str = "FailedOver";
    /// Traffic returned to the primary's own pods.
    pub const FAILED_BACK: &str = "FailedBack";
    /// Traffic flipped too often; the failover engine holds its target.
    pub const FLAPPING: &str = "Flapping";
    /// A guarded rollout's canary passed its analysis (or was promoted by request).
    pub const PROMOTED: &str = "Promoted";
    /// A guarded rollout's canary failed its analysis (or was aborted) and was rolled back.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// A pod failed Flotilla's checks and was taken out of the Service.
    pub const POD_EJECTED: &str = "PodEjected";
    /// An ejected pod passed its checks again and is back in the Service.
    pub const POD_RETURNED: &str = "PodReturned";
    /// A guarded rollout's canary pods were created.
    pub const ROLLOUT_STARTED: &str = "RolloutStarted";
    /// A failed analysis whose canary is kept for inspection (`autoRollback: false`).
    pub const ROLLOUT_HALTED: &str = "RolloutHalted";
    /// A template from the revision history became stable again without an analysis.
    pub const UNDONE: &str = "Undone";
}

/// Condition reasons written by the reconciler (CamelCase, API conventions).
pub mod reasons {
    /// Rollout complete, all replicas ready.
    pub const AVAILABLE: &str = "Available";
    /// Rollout under way or replicas not yet ready.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Nothing is rolling out.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// The Deployment exceeded its progress deadline.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// A MicroService named in `spec.dependencies` does not exist in the namespace.
    pub const DEPENDENCY_MISSING: &str = "DependencyMissing";
    /// The spec passed the schema but cannot be realised (see the message).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A child's name is taken by an object Flotilla does not control; it is left untouched.
    pub const CHILD_CONFLICT: &str = "ChildConflict";
    /// The API server refused one of the operator's requests (403): its RBAC lacks a verb on a
    /// resource, named in the message. The operator retries with backoff until it is granted.
    pub const FORBIDDEN: &str = "Forbidden";
    /// The operator's admission policy (`--allowed-image-prefixes`, `--allowed-service-accounts`,
    /// `--allowed-service-types`) does not allow what the spec asks for; the message names the
    /// field and the allowed values. Nothing is applied until the spec changes.
    pub const POLICY_REFUSED: &str = "PolicyRefused";
    /// The operator could not apply the children (transient; it retries).
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// No problem found.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// The Deployment has not reported status yet.
    pub const WAITING_FOR_DEPLOYMENT: &str = "WaitingForDeployment";
    /// Replicas are scaled to zero on purpose.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// A guarded rollout's analysis failed; the pods stay on the last good template.
    pub const ROLLOUT_FAILED: &str = "RolloutFailed";
    /// Event: a Secret or ConfigMap value the pods read through `env` changed, so the pod
    /// template changed and the pods roll (`--rollout-on-config-change`).
    pub const CONFIG_CHANGED: &str = "ConfigChanged";
    /// A Secret or ConfigMap (or a key of one) that `env` references without `optional: true`
    /// does not exist. Pods that start now would fail; the template keeps the digest it had, so
    /// nothing rolls until the object is back.
    pub const CONFIG_MISSING: &str = "ConfigMissing";
}

/// The revision history: one ControllerRevision per pod template a MicroService ran or tried,
/// named `<name>-<revision>`, owned by the MicroService, its `revision` counting up, its `data`
/// the spec's template fields (`{"spec": {...}}` without [`UNTRACKED_SPEC_FIELDS`]).
pub mod history {
    /// How the template ended: one of the `OUTCOME_*` values.
    pub const OUTCOME: &str = "flotilla.rs/outcome";
    /// The template became stable without an analysis (the first one, or a rolling update).
    pub const OUTCOME_STABLE: &str = "Stable";
    /// The template passed its analysis (or was promoted by request).
    pub const OUTCOME_PROMOTED: &str = "Promoted";
    /// The template was taken back from history without an analysis (`undo`).
    pub const OUTCOME_UNDONE: &str = "Undone";
    /// The template failed its analysis or was aborted; see [`REASON`].
    pub const OUTCOME_ROLLED_BACK: &str = "RolledBack";
    /// Why a rolled-back template failed (the rollout's reason, e.g. `CanaryNotReady`).
    pub const REASON: &str = "flotilla.rs/reason";
    /// The field manager that last changed the MicroService's spec when the entry was recorded
    /// (e.g. `kubectl-patch`, `helm`, `kubectl-flotilla`).
    pub const CHANGED_BY: &str = "flotilla.rs/changed-by";
    /// When the entry was last recorded (RFC 3339).
    pub const RECORDED_AT: &str = "flotilla.rs/recorded-at";
    /// Spec fields that are not part of a revision: how many pods, how they roll, fail over and
    /// are reached. `undo` leaves them as they are.
    pub const UNTRACKED_SPEC_FIELDS: [&str; 6] = [
        "replicas",
        "autoscaling",
        "rollout",
        "failover",
        "service",
        "dependencies",
    ];

    /// The label selector of the MicroService `name`'s entries.
    pub fn selector(name: &str) -> String {
        format!(
            "{}={name},{}={}",
            super::labels::INSTANCE,
            super::labels::MANAGED_BY,
            super::labels::MANAGED_BY_VALUE
        )
    }

    /// The spec's template fields as an entry records them (its `data.spec`): the spec without
    /// [`UNTRACKED_SPEC_FIELDS`].
    ///
    /// # Errors
    /// When the spec does not serialize.
    pub fn tracked_spec(
        spec: &crate::MicroServiceSpec,
    ) -> Result<serde_json::Value, serde_json::Error> {
        let mut value = serde_json::to_value(spec)?;
        if let Some(fields) = value.as_object_mut() {
            for untracked in UNTRACKED_SPEC_FIELDS {
                fields.remove(untracked);
            }
        }
        Ok(value)
    }

    /// Whether a template that ended with `outcome` may be gone back to.
    pub fn is_good(outcome: &str) -> bool {
        matches!(outcome, OUTCOME_STABLE | OUTCOME_PROMOTED | OUTCOME_UNDONE)
    }
}

/// The traffic-verdict contract: on every readiness probe of a failover-enabled pod, Flotilla's
/// prober sends this request header (gRPC: metadata) saying whether the pod is a member of the
/// traffic its Service selects. A pod that honours it closes its persistent connections while
/// `ejected` (HTTP/1.1 `Connection: close`, HTTP/2 and gRPC `GOAWAY`), so clients reconnect
/// through the Service and reach serving pods.
pub mod traffic {
    /// Header name (lower case, as HTTP/2 requires).
    pub const HEADER: &str = "flotilla-traffic";
    /// The pod is in the traffic.
    pub const SERVING: &str = "serving";
    /// The pod is out of the traffic; its connections should move.
    pub const EJECTED: &str = "ejected";
    /// Header carrying the verdict's Ed25519 signature:
    /// `v1.<kid>.<unix ms>.<base64url signature>` over
    /// `flotilla-verdict.v1\n<pod name>\n<verdict>\n<unix ms>`.
    pub const SIGNATURE_HEADER: &str = "flotilla-verdict-signature";
    /// Environment variable of every managed container with the operator's public verdict
    /// keys: comma-separated `<kid>:<base64url of the 32-byte public key>`.
    pub const KEYS_ENV: &str = "FLOTILLA_VERDICT_KEYS";
    /// Request header asking `GET <readiness path>` to stay open and report each readiness
    /// change as it happens (`heartbeat=<ms>`, `0` for changes only); a pod that supports it
    /// echoes the header and streams one line per report, `ready` or `not_ready <checks>`.
    pub const WATCH_HEADER: &str = "flotilla-watch";
    /// Request header beside [`WATCH_HEADER`] asking the pod to send a line at once when its API
    /// requests fail (`above=<maxErrorRate> requests=<fewest judged>`), instead of waiting for
    /// its next heartbeat; pods that do not know it ignore it.
    pub const WATCH_ERRORS_HEADER: &str = "flotilla-watch-errors";
}
