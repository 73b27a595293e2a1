//! The subcommands: each reads (or, for `retry`, annotates) through the API with the user's own
//! credentials and prints what `render` makes of it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use flotilla_crds::{annotations, MicroService, RolloutPhase};
use futures::{stream, StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use crate::error::Error;
use crate::release::{release, Release};
use crate::render;
use crate::snapshot::Snapshot;

/// Where the commands act: the client and the namespace chosen by flags or the kubeconfig.
#[derive(Clone)]
pub struct Target {
    pub client: Client,
    pub namespace: String,
}

impl Target {
    fn msvcs(&self) -> Api<MicroService> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// `get NAME`: the tree once, or (`watch`) again on every change of the MicroService or its pods.
pub async fn get(t: &Target, name: &str, watch: bool, out: &mut impl Write) -> Result<(), Error> {
    let snapshot = Snapshot::fetch(&t.client, &t.namespace, name).await?;
    let mut shown = render::tree(&snapshot, Timestamp::now());
    write_out(out, &shown)?;
    if !watch {
        return Ok(());
    }
    let clear = std::io::stdout().is_terminal();
    let msvc_changes = watcher(
        t.msvcs(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .touched_objects()
    .map_ok(|_| ());
    let selector = snapshot
        .msvc
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), &t.namespace);
    let pod_changes = watcher(pods, watcher::Config::default().labels(&selector))
        .touched_objects()
        .map_ok(|_| ());
    let mut changes = stream::select(msvc_changes.boxed(), pod_changes.boxed());
    while let Some(change) = changes.next().await {
        change.map_err(|e| Error::Refused(format!("watch failed: {e}")))?;
        // A burst of events (a rollout touches several pods at once) redraws once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let snapshot = Snapshot::fetch(&t.client, &t.namespace, name).await?;
        let drawn = render::tree(&snapshot, Timestamp::now());
        if drawn != shown {
            let separator = if clear { "\x1b[2J\x1b[H" } else { "\n" };
            write_out(out, &format!("{separator}{drawn}"))?;
            shown = drawn;
        }
    }
    Ok(())
}

/// `list`: the namespace's MicroServices, or every namespace's.
pub async fn list(t: &Target, all_namespaces: bool, out: &mut impl Write) -> Result<(), Error> {
    let api: Api<MicroService> = if all_namespaces {
        Api::all(t.client.clone())
    } else {
        t.msvcs()
    };
    let mut items = api.list(&ListParams::default()).await?.items;
    if items.is_empty() {
        let place = if all_namespaces {
            "any namespace".to_owned()
        } else {
            format!("namespace {:?}", t.namespace)
        };
        return write_out(out, &format!("No MicroServices found in {place}.\n"));
    }
    items.sort_by_key(|m| (m.metadata.namespace.clone(), m.metadata.name.clone()));
    write_out(out, &render::list(&items, all_namespaces, Timestamp::now()))
}

/// `why NAME`: the last failover and the last release's outcome, with evidence and Events.
pub async fn why(t: &Target, name: &str, out: &mut impl Write) -> Result<(), Error> {
    let snapshot = Snapshot::fetch(&t.client, &t.namespace, name).await?;
    write_out(out, &render::why(&snapshot, Timestamp::now()))
}

/// `status NAME`: waits until the current release finishes; an error when it was rolled back or
/// degraded, or when `timeout` runs out first.
pub async fn status(
    t: &Target,
    name: &str,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<(), Error> {
    let api = t.msvcs();
    // Fail fast on a missing name or missing RBAC, before watching.
    let first = api
        .get(name)
        .await
        .map_err(|e| Error::on(&t.namespace, name, e))?;
    let mut last = String::new();
    let mut report = |m: &MicroService, out: &mut dyn Write| -> Result<Option<Release>, Error> {
        let r = release(m);
        let line = match &r {
            Release::InProgress(why) => format!("{name}: in progress: {why}"),
            Release::Succeeded(what) => format!("{name}: released: {what}"),
            Release::Failed(_) => String::new(),
        };
        if !line.is_empty() && line != last {
            writeln!(out, "{line}").map_err(io)?;
            last = line;
        }
        Ok((!matches!(r, Release::InProgress(_))).then_some(r))
    };
    let finish = |r: Release| match r {
        Release::Failed(why) => Err(Error::Failed(format!("{name}: {why}"))),
        _ => Ok(()),
    };
    if let Some(done) = report(&first, out)? {
        return finish(done);
    }
    let changes = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects();
    let wait = async {
        let mut changes = std::pin::pin!(changes);
        while let Some(m) = changes.next().await {
            let m = m.map_err(|e| Error::Refused(format!("watch failed: {e}")))?;
            if let Some(done) = report(&m, out)? {
                return Ok(done);
            }
        }
        Err(Error::Refused("the watch ended".into()))
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(done) => finish(done?),
        Err(_) => Err(Error::TimedOut {
            after: timeout,
            what: format!("{name}: {last}"),
        }),
    }
}

/// `retry NAME`: asks a guarded rollout to analyse its rolled-back revision again, through the
/// `flotilla.rs/rollout-retry` annotation, then waits up to `ack` for the operator to
/// acknowledge it in `status.rollout.retryToken`.
pub async fn retry(
    t: &Target,
    name: &str,
    ack: Duration,
    out: &mut impl Write,
) -> Result<(), Error> {
    let api = t.msvcs();
    let m = api
        .get(name)
        .await
        .map_err(|e| Error::on(&t.namespace, name, e))?;
    let rollout = m.status.as_ref().and_then(|s| s.rollout.as_ref());
    if rollout.map(|r| r.phase) != Some(RolloutPhase::RolledBack) {
        return Err(Error::Refused(format!(
            "{name}: nothing to retry: the last release was not rolled back (rollout phase {})",
            rollout.map(|r| r.phase.as_str()).unwrap_or("none")
        )));
    }
    let token = Timestamp::now().to_string();
    let patch =
        serde_json::json!({"metadata": {"annotations": {annotations::ROLLOUT_RETRY: token}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::on(&t.namespace, name, e))?;
    write_out(
        out,
        &format!(
            "{name}: retry of revision {} requested ({}={token})\n",
            rollout
                .and_then(|r| r.failed_revision.as_deref())
                .unwrap_or("?"),
            annotations::ROLLOUT_RETRY
        ),
    )?;
    let acked = kube::runtime::wait::await_condition(api, name, move |m: Option<&MicroService>| {
        m.and_then(|m| m.status.as_ref())
            .and_then(|s| s.rollout.as_ref())
            .and_then(|r| r.retry_token.as_deref())
            == Some(token.as_str())
    });
    match tokio::time::timeout(ack, acked).await {
        Ok(Ok(_)) => write_out(out, &format!("{name}: the operator started the analysis again\n")),
        Ok(Err(e)) => Err(Error::Refused(format!("watch failed: {e}"))),
        Err(_) => write_out(
            out,
            &format!(
                "{name}: not acknowledged within {} (the request stays; is the operator running?)\n",
                crate::error::humantime(ack)
            ),
        ),
    }
}

fn write_out(out: &mut impl Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes()).map_err(io)?;
    out.flush().map_err(io)
}

fn io(e: std::io::Error) -> Error {
    Error::Refused(format!("cannot write the output: {e}"))
}
