//! Waiting on conditions, never on fixed sleeps.
//!
//! State kept by the API server is waited on through watches: [`for_object`] and
//! [`for_deletion`] follow one object (kube's `watch_object`, the stream behind
//! `await_condition`), and [`Changes`] re-runs a probe whenever anything in a namespace changes
//! (see [`crate::Harness::wait`]). Only state the API server does not hold (an HTTP endpoint, a
//! process's output, a client's request log) is polled, by [`poll`]. Every wait has a deadline
//! and fails naming what it waited for and the last thing it saw.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout_at, Instant};

use flotilla_crds::MicroService;

/// Default deadline for a cluster to converge. Generous: a loaded 2-core machine starts processes
/// slowly, and a real cluster pulls images.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How soon a probe that failed (an API error, a refused connection) is tried again: an error is
/// not a change anyone will announce.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(250);

/// Interval of [`poll`]: short enough that tests finish soon after the state is reached, long
/// enough not to load the machine.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Waits until the object `name` exists and `ready` holds for it; returns the object. Driven by a
/// watch on that one object. On timeout the error shows the last version seen.
pub async fn for_object<K, F>(api: &Api<K>, name: &str, timeout: Duration, ready: F) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    F: Fn(&K) -> bool,
{
    let found = watch_until(api, name, timeout, |seen| {
        seen.filter(|obj| ready(obj)).cloned()
    })
    .await?;
    Ok(found)
}

/// Waits until the object `name` is gone (deleted and finalized). Driven by a watch.
pub async fn for_deletion<K>(api: &Api<K>, name: &str, timeout: Duration) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    watch_until(api, name, timeout, |seen| seen.is_none().then_some(())).await
}

/// Follows the object `name` until `check` maps what is seen (`None`: absent) to a value.
async fn watch_until<K, T>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    check: impl Fn(Option<&K>) -> Option<T>,
) -> Result<T>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let deadline = Instant::now() + timeout;
    let mut stream = kube::runtime::watcher::watch_object(api.clone(), name).boxed();
    let mut last: Option<K> = None;
    let mut last_error = None;
    loop {
        match timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(seen))) => {
                if let Some(value) = check(seen.as_ref()) {
                    return Ok(value);
                }
                last = seen;
            }
            Ok(Some(Err(err))) => {
                last_error = Some(err.to_string());
                // The watcher re-lists on its next poll; do not spin while the API is failing.
                sleep(RETRY_AFTER_ERROR).await;
            }
            Ok(None) => bail!("the watch on {name} ended"),
            Err(_) => {
                let kind = K::kind(&K::DynamicType::default()).into_owned();
                bail!(
                    "timed out after {timeout:?} waiting for {kind} {name}; last error: \
                     {last_error:?}; last seen: {last:#?}"
                );
            }
        }
    }
}

/// Runs `work` (reading a process's output until it shows something, say) to its end, or fails
/// after `timeout` naming `what`: for waits that follow a stream rather than poll.
pub async fn within<T>(
    what: &str,
    timeout: Duration,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, work).await {
        Ok(done) => done,
        Err(_) => Err(timed_out(what, timeout, None)),
    }
}

/// Calls `probe` every 100 ms until it returns `Some`, or fails after `timeout` naming `what` and
/// the last error `probe` returned. Only for state the API server does not hold; API state is
/// waited on with a watch.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
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
            return Err(timed_out(what, timeout, last_error));
        }
        sleep(POLL_INTERVAL).await;
    }
}

fn timed_out(what: &str, timeout: Duration, last_error: Option<String>) -> anyhow::Error {
    match last_error {
        Some(err) => {
            anyhow::anyhow!("timed out after {timeout:?} waiting for {what}; last error: {err}")
        }
        None => anyhow::anyhow!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// A counter that moves whenever an object in one namespace changes: the objects Flotilla
/// reads and writes (MicroServices and their children, pods, EndpointSlices, Events, Leases).
/// The watch tasks end when this is dropped.
pub struct Changes {
    rx: watch::Receiver<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Changes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Changes {
    /// Starts watching the namespace `ns`.
    pub fn watch(client: &Client, ns: &str) -> Self {
        let (tx, rx) = watch::channel(0u64);
        let tasks = vec![
            feed(Api::<MicroService>::namespaced(client.clone(), ns), &tx),
            feed(Api::<Deployment>::namespaced(client.clone(), ns), &tx),
            feed(Api::<Service>::namespaced(client.clone(), ns), &tx),
            feed(Api::<ConfigMap>::namespaced(client.clone(), ns), &tx),
            feed(
                Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns),
                &tx,
            ),
            feed(Api::<Pod>::namespaced(client.clone(), ns), &tx),
            feed(Api::<EndpointSlice>::namespaced(client.clone(), ns), &tx),
            feed(Api::<Event>::namespaced(client.clone(), ns), &tx),
            feed(Api::<Lease>::namespaced(client.clone(), ns), &tx),
        ];
        Self { rx, tasks }
    }

    /// Runs `probe` now and again after every change in the namespace, until it returns
    /// `Some` or `timeout` passes. A probe error is retried after 250 ms (and reported if the
    /// deadline passes).
    pub async fn until<T, F, Fut>(&self, what: &str, timeout: Duration, mut probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let mut rx = self.rx.clone();
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        loop {
            // Changes from here on wake the next round, including those made while probing.
            rx.borrow_and_update();
            let failed = match probe().await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => false,
                Err(err) => {
                    last_error = Some(format!("{err:#}"));
                    true
                }
            };
            let next = async {
                if failed {
                    tokio::select! {
                        _ = rx.changed() => {}
                        () = sleep(RETRY_AFTER_ERROR) => {}
                    }
                } else if rx.changed().await.is_err() {
                    // The feed is gone (only when the harness is torn down): poll instead.
                    sleep(POLL_INTERVAL).await;
                }
            };
            if timeout_at(deadline, next).await.is_err() {
                return Err(timed_out(what, timeout, last_error));
            }
        }
    }
}

/// Bumps `tx` on every event of a watch on `api` (the initial list included, so nothing between
/// a probe and the watch's start is missed).
fn feed<K>(api: Api<K>, tx: &watch::Sender<u64>) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let tx = tx.clone();
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while events.next().await.is_some() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    })
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
    async fn poll_returns_first_success() {
        // The probe is polled until it yields a value, which is handed back.
        let mut calls = 0;
        let value = poll("three calls", Duration::from_secs(10), || {
            calls += 1;
            let n = calls;
            async move { Ok((n >= 3).then_some(n)) }
        })
        .await;
        assert_eq!(value.ok(), Some(3));
    }

    #[tokio::test]
    async fn poll_times_out_with_last_error() {
        // A probe that never succeeds fails after the deadline with its last error.
        let err = poll::<(), _, _>("never", Duration::from_millis(300), || async {
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
