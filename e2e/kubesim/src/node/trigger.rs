//! Wake-ups for the level-triggered loops: a watch on each kind a loop depends on pokes a `Notify`,
//! and the loop re-lists and re-decides everything. Watch errors are retried with kube's default
//! back-off; the loops' periodic resync covers any gap.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Spawns a watch on all objects of `K` that notifies `notify` on every event.
pub fn watch_all<K>(client: &kube::Client, notify: Arc<Notify>, token: CancellationToken)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                next = stream.next() => match next {
                    Some(Ok(_)) => notify.notify_one(),
                    Some(Err(e)) => tracing::debug!(kind = %K::kind(&()), error = %e, "watch error"),
                    None => return,
                },
            }
        }
    });
}

/// Waits for a poke, the resync period or cancellation (returns false on cancellation). A short
/// pause after a poke coalesces bursts of events into one pass.
pub async fn next_pass(notify: &Notify, resync: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        () = token.cancelled() => return false,
        () = notify.notified() => {},
        () = tokio::time::sleep(resync) => {},
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    !token.is_cancelled()
}
