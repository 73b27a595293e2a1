//! Fault injection for reliability tests: fail the next N requests that match a verb and
//! resource with a chosen status, delay matching requests (or hang them until the rules are
//! cleared, for example only one replica's Lease renewals), or drop every open watch.
//! Reachable in-process through [`FaultInjector`] and over HTTP under `/kubesim/`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::status::ApiError;

/// Fail the next `count` requests matching `verb` and `resource` with `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`;
    /// `None` matches every verb.
    #[serde(default)]
    pub verb: Option<String>,
    /// A resource plural (`pods`), optionally with a subresource (`deployments/status`);
    /// `None` matches every resource.
    #[serde(default)]
    pub resource: Option<String>,
    /// 409, 429, 500 and 503 get the real server's reasons; other codes are sent as given.
    pub status: u16,
    /// How many matching requests fail before the rule is used up.
    #[serde(default = "one")]
    pub count: u32,
    /// For 429/503: the `Retry-After` seconds sent with the error.
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
}

fn one() -> u32 {
    1
}

/// Delay every request matching `verb`/`resource` by `millis`. A delayed request is answered
/// early when the rules are cleared (`DELETE /kubesim/faults`), so a long delay is a hang that
/// the test ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyRule {
    #[serde(default)]
    pub verb: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    pub millis: u64,
    /// Only requests whose JSON body has this `spec.holderIdentity`: the Lease writes of one
    /// leader-election candidate.
    #[serde(default)]
    pub holder_identity: Option<String>,
}

impl LatencyRule {
    /// Hangs every `update`/`patch` of a Lease that `holder` sends (its renewals), until the rules
    /// are cleared.
    pub fn hang_lease_writes_of(holder: &str) -> Vec<LatencyRule> {
        ["update", "patch"]
            .into_iter()
            .map(|verb| LatencyRule {
                verb: Some(verb.to_string()),
                resource: Some("leases".to_string()),
                millis: 3_600_000,
                holder_identity: Some(holder.to_string()),
            })
            .collect()
    }

    fn matches_body(&self, body: &[u8]) -> bool {
        let Some(want) = self.holder_identity.as_deref() else {
            return true;
        };
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.pointer("/spec/holderIdentity")
                    .and_then(|h| h.as_str().map(|h| h == want))
            })
            .unwrap_or(false)
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct Rules {
    failures: Vec<FaultRule>,
    latency: Vec<LatencyRule>,
}

/// The fault state of one cluster.
pub struct Faults {
    rules: Mutex<Rules>,
    drops: watch::Sender<u64>,
    cleared: watch::Sender<u64>,
    shutdown: CancellationToken,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rules: Mutex::new(Rules::default()),
            drops: watch::Sender::new(0),
            cleared: watch::Sender::new(0),
            shutdown: CancellationToken::new(),
        }
    }
}

fn matches(
    rule_verb: &Option<String>,
    rule_res: &Option<String>,
    verb: &str,
    resource: &str,
) -> bool {
    rule_verb.as_deref().is_none_or(|v| v == verb)
        && rule_res.as_deref().is_none_or(|r| {
            r == resource || resource.split('/').next() == Some(r) && !r.contains('/')
        })
}

/// The error a fault rule answers with.
pub fn error_for(status: u16, retry_after: Option<u64>) -> ApiError {
    let mut e = match status {
        409 => ApiError::new(409, "Conflict", "kubesim: injected conflict"),
        429 => ApiError::new(
            429,
            "TooManyRequests",
            "kubesim: injected throttling, please try again later",
        ),
        500 => ApiError::internal("kubesim: injected internal error"),
        503 => ApiError::new(
            503,
            "ServiceUnavailable",
            "kubesim: injected unavailability",
        ),
        504 => ApiError::new(504, "Timeout", "kubesim: injected timeout"),
        other => ApiError::new(
            other,
            "InternalError",
            format!("kubesim: injected status {other}"),
        ),
    };
    e.details.retry_after = retry_after;
    e
}

impl Faults {
    fn rules(&self) -> MutexGuard<'_, Rules> {
        match self.rules.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The delay and the failure (if any) for one request with `body`; consumes one use of the
    /// first matching failure rule.
    pub fn check(
        &self,
        verb: &str,
        resource: &str,
        body: &[u8],
    ) -> (Option<Duration>, Option<ApiError>) {
        let mut rules = self.rules();
        let delay = rules
            .latency
            .iter()
            .filter(|l| matches(&l.verb, &l.resource, verb, resource) && l.matches_body(body))
            .map(|l| l.millis)
            .max()
            .map(Duration::from_millis);
        let mut err = None;
        if let Some(i) = rules
            .failures
            .iter()
            .position(|f| matches(&f.verb, &f.resource, verb, resource))
        {
            let rule = &mut rules.failures[i];
            err = Some(error_for(rule.status, rule.retry_after_seconds));
            rule.count = rule.count.saturating_sub(1);
            if rule.count == 0 {
                rules.failures.remove(i);
            }
        }
        (delay, err)
    }

    pub fn watch_drops(&self) -> watch::Receiver<u64> {
        self.drops.subscribe()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits out an injected `delay`, ending early when the rules are cleared or the server
    /// shuts down.
    pub async fn delay(&self, delay: Duration) {
        let mut cleared = self.cleared.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cleared.changed() => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// The current rules as JSON (for `GET /kubesim/faults`).
    pub fn describe(&self) -> serde_json::Value {
        serde_json::to_value(self.rules().clone()).unwrap_or_default()
    }
}

/// A handle to inject faults into a running cluster.
#[derive(Clone)]
pub struct FaultInjector {
    pub(crate) faults: Arc<crate::api::Shared>,
}

impl std::fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultInjector").finish_non_exhaustive()
    }
}

impl FaultInjector {
    /// Fails the next `rule.count` matching requests.
    pub fn fail(&self, rule: FaultRule) {
        self.faults.faults.rules().failures.push(rule);
    }

    /// Shorthand: fail the next `count` requests with `verb` on `resource` with `status`.
    pub fn fail_next(&self, verb: &str, resource: &str, status: u16, count: u32) {
        self.fail(FaultRule {
            verb: Some(verb.to_string()),
            resource: Some(resource.to_string()),
            status,
            count,
            retry_after_seconds: (status == 429 || status == 503).then_some(1),
        });
    }

    /// Delays matching requests.
    pub fn add_latency(&self, rule: LatencyRule) {
        self.faults.faults.rules().latency.push(rule);
    }

    /// Closes every open watch (clients see the stream end and re-watch).
    pub fn drop_watches(&self) {
        self.faults.faults.drops.send_modify(|n| *n += 1);
    }

    /// Removes all failure and latency rules, and answers the requests they are delaying.
    pub fn clear(&self) {
        *self.faults.faults.rules() = Rules::default();
        self.faults.faults.cleared.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_used_up() {
        // A rule for two failures fails exactly two matching requests, and only matching ones.
        let f = Faults::default();
        f.rules().failures.push(FaultRule {
            verb: Some("create".into()),
            resource: Some("pods".into()),
            status: 503,
            count: 2,
            retry_after_seconds: Some(3),
        });
        assert!(f.check("get", "pods", b"").1.is_none());
        let e = f.check("create", "pods", b"").1.expect("first failure");
        assert_eq!(
            (e.code, e.reason, e.details.retry_after),
            (503, "ServiceUnavailable", Some(3))
        );
        assert!(f.check("create", "pods/status", b"").1.is_some());
        assert!(f.check("create", "pods", b"").1.is_none());
    }

    #[test]
    fn lease_hang_matches_one_holder() {
        // The hang delays only the named holder's Lease writes, not its reads or another
        // candidate's writes.
        let f = Faults::default();
        f.rules().latency = LatencyRule::hang_lease_writes_of("op-a");
        let a = br#"{"spec":{"holderIdentity":"op-a"}}"#;
        let b = br#"{"spec":{"holderIdentity":"op-b"}}"#;
        assert!(f.check("update", "leases", a).0.is_some());
        assert!(f.check("patch", "leases", a).0.is_some());
        assert!(f.check("update", "leases", b).0.is_none());
        assert!(f.check("get", "leases", b"").0.is_none());
        assert!(f.check("update", "configmaps", a).0.is_none());
    }
}
