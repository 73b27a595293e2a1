//! The subcommands: each reads (or, for `retry`, annotates) through the API with the user's own
//! credentials and prints what `render` makes of it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use flotilla_crds::{annotations, MicroService, RolloutPhase, RolloutStatus, RolloutStrategy};
use futures::{stream, StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use crate::error::Error;
use crate::history;
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
    pub(crate) fn msvcs(&self) -> Api<MicroService> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The MicroService `name`; a missing one or missing RBAC in the user's words.
    pub(crate) async fn get(&self, name: &str) -> Result<MicroService, Error> {
        self.msvcs()
            .get(name)
            .await
            .map_err(|e| Error::on(&self.namespace, name, e))
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
    let first = t.get(name).await?;
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

/// A one-shot request to the rollout, made with an annotation and acknowledged by the operator
/// in `status.rollout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Analyse a rolled-back revision again (`flotilla.rs/rollout-retry`).
    Retry,
    /// Promote the revision under analysis now (`flotilla.rs/rollout-promote`).
    Promote,
    /// Roll the revision under analysis back now (`flotilla.rs/rollout-abort`).
    Abort,
}

impl Request {
    fn annotation(self) -> &'static str {
        match self {
            Request::Retry => annotations::ROLLOUT_RETRY,
            Request::Promote => annotations::ROLLOUT_PROMOTE,
            Request::Abort => annotations::ROLLOUT_ABORT,
        }
    }

    /// The phase in which the request makes sense.
    fn applies_in(self) -> RolloutPhase {
        match self {
            Request::Retry => RolloutPhase::RolledBack,
            Request::Promote | Request::Abort => RolloutPhase::Analyzing,
        }
    }

    fn acknowledged(self, r: &RolloutStatus) -> Option<&str> {
        match self {
            Request::Retry => r.retry_token.as_deref(),
            Request::Promote => r.promote_token.as_deref(),
            Request::Abort => r.abort_token.as_deref(),
        }
    }

    fn refusal(self, name: &str, phase: &str) -> String {
        match self {
            Request::Retry => format!(
                "{name}: nothing to retry: the last release was not rolled back (rollout phase {phase})"
            ),
            Request::Promote => format!(
                "{name}: nothing to promote: no release is being analysed (rollout phase {phase})"
            ),
            Request::Abort => format!(
                "{name}: nothing to abort: no release is being analysed (rollout phase {phase})"
            ),
        }
    }
}

/// Sends `request` to the rollout of `name` when its phase allows it, then waits up to `ack`
/// for the operator to acknowledge it and says what came of it.
pub async fn request(
    t: &Target,
    name: &str,
    request: Request,
    ack: Duration,
    out: &mut impl Write,
) -> Result<(), Error> {
    let api = t.msvcs();
    let m = t.get(name).await?;
    let rollout = m.status.as_ref().and_then(|s| s.rollout.as_ref());
    if rollout.map(|r| r.phase) != Some(request.applies_in()) {
        let phase = rollout.map(|r| r.phase.as_str()).unwrap_or("none");
        return Err(Error::Refused(request.refusal(name, phase)));
    }
    let revision = match request {
        Request::Retry => rollout.and_then(|r| r.failed_revision.as_deref()),
        Request::Promote | Request::Abort => rollout.and_then(|r| r.canary_revision.as_deref()),
    }
    .unwrap_or("?")
    .to_owned();
    let token = Timestamp::now().to_string();
    let key = request.annotation();
    let patch = serde_json::json!({"metadata": {"annotations": {key: token}}});
    api.patch(name, &patch_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::on(&t.namespace, name, e))?;
    let verb = format!("{request:?}").to_lowercase();
    write_out(
        out,
        &format!("{name}: {verb} of revision {revision} requested ({key}={token})\n"),
    )?;
    let wanted = token.clone();
    let acked = kube::runtime::wait::await_condition(api, name, move |m: Option<&MicroService>| {
        m.and_then(|m| m.status.as_ref())
            .and_then(|s| s.rollout.as_ref())
            .and_then(|r| request.acknowledged(r))
            == Some(wanted.as_str())
    });
    match tokio::time::timeout(ack, acked).await {
        Ok(Ok(m)) => {
            let r = m.and_then(|m| m.status).and_then(|s| s.rollout);
            let phase = r.as_ref().map(|r| r.phase.as_str()).unwrap_or("none");
            let why = r
                .and_then(|r| r.message)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            write_out(out, &format!("{name}: done, rollout phase {phase}{why}\n"))
        }
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

/// `pause NAME` / `resume NAME`: sets `spec.rollout.paused`, the intent that holds promotion.
pub async fn set_paused(
    t: &Target,
    name: &str,
    paused: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    let api = t.msvcs();
    let m = t.get(name).await?;
    if m.spec.rollout.strategy != RolloutStrategy::Guarded {
        return Err(Error::Refused(format!(
            "{name}: rollouts are not guarded (spec.rollout.strategy is {:?}): there is no \
             analysis to pause or resume",
            m.spec.rollout.strategy
        )));
    }
    if m.spec.rollout.paused == paused {
        let state = if paused {
            "already paused"
        } else {
            "not paused"
        };
        return Err(Error::Refused(format!("{name}: {state}")));
    }
    let patch = serde_json::json!({"spec": {"rollout": {"paused": paused}}});
    api.patch(name, &patch_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::on(&t.namespace, name, e))?;
    let text = if paused {
        format!("{name}: paused: a release that passes its analysis waits for resume or promote; a failing one is still rolled back\n")
    } else {
        format!("{name}: resumed: a release that passed its analysis is promoted\n")
    };
    write_out(out, &text)
}

/// The MicroService `name` and its revision history.
async fn history_of(t: &Target, name: &str) -> Result<(MicroService, Vec<history::Entry>), Error> {
    let m = t.get(name).await?;
    let api: Api<ControllerRevision> = Api::namespaced(t.client.clone(), &t.namespace);
    let selector = flotilla_crds::history::selector(name);
    let revisions = api.list(&ListParams::default().labels(&selector)).await?;
    let entries = history::entries(&m, &revisions.items);
    Ok((m, entries))
}

fn stable_revision(m: &MicroService) -> Option<String> {
    m.status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .and_then(|r| r.stable_revision.clone())
}

/// `history NAME`: the templates the service ran or tried, oldest first.
pub async fn history(t: &Target, name: &str, out: &mut impl Write) -> Result<(), Error> {
    let (m, entries) = history_of(t, name).await?;
    if entries.is_empty() {
        return write_out(
            out,
            &format!("{name}: no revision history yet (it starts with the next template change)\n"),
        );
    }
    let stable = stable_revision(&m);
    write_out(
        out,
        &history::render(&entries, stable.as_deref(), Timestamp::now()),
    )
}

/// `undo NAME [--to-revision N]`: puts the template fields of a good entry of the history back
/// into the spec, with the `flotilla.rs/rollout-undo` annotation naming it, so it becomes stable
/// without an analysis; waits up to `wait` for the operator to make it stable.
pub async fn undo(
    t: &Target,
    name: &str,
    to: Option<i64>,
    wait: Duration,
    out: &mut impl Write,
) -> Result<(), Error> {
    let (m, entries) = history_of(t, name).await?;
    let stable = stable_revision(&m);
    let target = history::undo_target(&entries, stable.as_deref(), to)
        .map_err(|why| Error::Refused(format!("{name}: {why}")))?;
    let mut patch = serde_json::json!({
        "metadata": {"annotations": {annotations::ROLLOUT_UNDO: target.revision}},
    });
    patch["spec"] = history::merge_patch(&history::tracked_spec(&m), &target.spec);
    t.msvcs()
        .patch(name, &patch_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::on(&t.namespace, name, e))?;
    write_out(
        out,
        &format!(
            "{name}: going back to revision {} ({}, {})\n",
            target.number, target.revision, target.image
        ),
    )?;
    let wanted = target.revision.clone();
    let stable_again =
        kube::runtime::wait::await_condition(t.msvcs(), name, move |m: Option<&MicroService>| {
            m.and_then(|m| m.status.as_ref())
                .and_then(|s| s.rollout.as_ref())
                .is_some_and(|r| {
                    r.stable_revision.as_deref() == Some(wanted.as_str())
                        && r.phase != RolloutPhase::Analyzing
                })
        });
    match tokio::time::timeout(wait, stable_again).await {
        Ok(Ok(m)) => {
            let how = m
                .and_then(|m| m.status)
                .and_then(|s| s.rollout)
                .and_then(|r| r.reason)
                .unwrap_or_default();
            write_out(
                out,
                &format!("{name}: revision {} is stable ({how})\n", target.revision),
            )
        }
        Ok(Err(e)) => Err(Error::Refused(format!("watch failed: {e}"))),
        Err(_) => Err(Error::TimedOut {
            after: wait,
            what: format!(
                "{name}: revision {} is not stable yet; `kubectl flotilla get {name}` shows where it stands",
                target.revision
            ),
        }),
    }
}

/// Every change the plugin makes is recorded under its own field manager, so the revision
/// history and `managedFields` say who changed what.
pub(crate) fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// The plugin's field manager.
pub const FIELD_MANAGER: &str = "kubectl-flotilla";

pub(crate) fn write_out(out: &mut impl Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes()).map_err(io)?;
    out.flush().map_err(io)
}

fn io(e: std::io::Error) -> Error {
    Error::Refused(format!("cannot write the output: {e}"))
}
