//! Waiting on conditions: poll an object until a predicate holds, with a deadline. Tests never
//! sleep a fixed time and then assert; they wait for the state they need or fail with the last
//! state they saw.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::time::{sleep, Instant};

/// Default deadline for a cluster to converge. Generous: a loaded 2-core machine starts processes
/// slowly, and a real cluster pulls images.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Interval between polls. Short enough that tests finish soon after the state is reached, long
/// enough not to load the API server.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Calls `probe` until it returns `Some`, or fails after `timeout` naming `what` and the last
/// observation `probe` described with `Err`.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(format!("{err:#}")),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(err) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {err}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Waits until the object `name` exists and `ready` holds for it; returns the object. On timeout
/// the error shows the last version of the object seen.
pub async fn for_object<K, F>(api: &Api<K>, name: &str, timeout: Duration, ready: F) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
    F: Fn(&K) -> bool,
{
    let deadline = Instant::now() + timeout;
    let mut last: Option<K> = None;
    let mut last_error = None;
    loop {
        match api.get_opt(name).await {
            Ok(Some(obj)) if ready(&obj) => return Ok(obj),
            Ok(seen) => last = seen,
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= deadline {
            let dt = K::DynamicType::default();
            let kind = K::kind(&dt);
            bail!(
                "timed out after {timeout:?} waiting for {kind} {name}; last error: {last_error:?}; \
                 last seen: {last:#?}"
            );
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Waits until the object `name` is gone (deleted and finalized).
pub async fn for_deletion<K>(api: &Api<K>, name: &str, timeout: Duration) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let what = format!("{} {name} to be deleted", K::kind(&Default::default()));
    until(&what, timeout, || {
        let api = api.clone();
        let name = name.to_owned();
        async move { Ok(api.get_opt(&name).await?.is_none().then_some(())) }
    })
    .await
}

/// The condition `type_` in `conditions`, if present.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when `conditions` has `type_` with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    condition(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn until_returns_first_success() {
        // The probe is polled until it yields a value, which is handed back.
        let mut calls = 0;
        let value = until("three calls", Duration::from_secs(10), || {
            calls += 1;
            let n = calls;
            async move { Ok((n >= 3).then_some(n)) }
        })
        .await;
        assert_eq!(value.ok(), Some(3));
    }

    #[tokio::test]
    async fn until_times_out_with_last_error() {
        // A probe that never succeeds fails after the deadline with its last error.
        let err = until::<(), _, _>("never", Duration::from_millis(300), || async {
            bail!("still broken")
        })
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(
            err.contains("never") && err.contains("still broken"),
            "{err}"
        );
    }

    #[test]
    fn condition_status_is_read_by_type() {
        // Only a condition of the asked type with status True counts.
        let conditions: Vec<Condition> = serde_json::from_value(serde_json::json!([
            {"type": "Ready", "status": "False", "reason": "RollingOut", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Progressing", "status": "True", "reason": "RollingOut", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]))
        .expect("conditions parse");
        assert!(!is_true(&conditions, "Ready"));
        assert!(is_true(&conditions, "Progressing"));
        assert!(!is_true(&conditions, "Degraded"));
    }
}
