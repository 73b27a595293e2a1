//! `kubectl flotilla dashboard`: the fleet in a browser, served from the user's machine with the
//! user's kubeconfig, so it reads exactly what the user may read and needs no privileges in the
//! cluster. Three watches (MicroServices, Flotilla's pods, Events) keep [`state::Fleet`]
//! current; the page gets JSON views of it and their changes over Server-Sent Events.
//!
//! The pipeline: `watch` (this module: the only one that talks to the API server) → `state`
//! (what the watches hold, and the figures sampled over time) → `views`, `timeline` (pure JSON
//! views) → `routes` (HTTP, no binding) → the page (`page/`: HTML, CSS and JavaScript compiled
//! into the binary, no libraries).

pub mod routes;
pub mod state;
pub mod timeline;
pub mod views;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use flotilla_crds::{labels, MicroService};
use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::task::JoinSet;

use crate::commands::{write_out, Target};
use crate::error::Error;
use state::{Feed, FeedError, Fleet};

/// The default address: loopback only, the port `kubectl proxy` uses.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8001";

/// How long the watches may take to list everything before the dashboard gives up: the first
/// list of a large namespace over a slow link, not a hang.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What to serve and where.
#[derive(Debug, Clone)]
pub struct Options {
    pub address: SocketAddr,
    /// Every namespace, rather than the target's.
    pub all_namespaces: bool,
}

/// Serves the dashboard until Ctrl-C or SIGTERM. Fails with one line when the cluster cannot be
/// read (no access, RBAC) or the address cannot be bound.
pub async fn run(t: &Target, options: Options, out: &mut impl Write) -> Result<(), Error> {
    let namespace = (!options.all_namespaces).then(|| t.namespace.clone());
    check_access(&t.client, namespace.as_deref()).await?;
    let listener = tokio::net::TcpListener::bind(options.address)
        .await
        .map_err(|source| Error::Listen {
            address: options.address,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Listen {
        address: options.address,
        source,
    })?;
    let scope = match &namespace {
        Some(ns) => format!("namespace {ns:?}"),
        None => "all namespaces".to_owned(),
    };
    let fleet = Fleet::new(scope.clone());
    // The watches end with the dashboard: the set aborts them when dropped.
    let mut watches = JoinSet::new();
    watches.spawn(follow_msvcs(
        t.client.clone(),
        namespace.clone(),
        fleet.clone(),
    ));
    watches.spawn(follow_pods(
        t.client.clone(),
        namespace.clone(),
        fleet.clone(),
    ));
    watches.spawn(follow_events(t.client.clone(), namespace, fleet.clone()));
    wait_synced(&fleet).await?;
    let server = warp::serve(routes::routes(fleet, bound))
        .incoming(listener)
        .run();
    if !bound.ip().is_loopback() {
        eprintln!(
            "warning: {bound} is not a loopback address: anyone who can reach it reads what your \
             kubeconfig may read"
        );
    }
    write_out(
        out,
        &format!(
            "Serving the Flotilla dashboard of {scope} on http://{bound}/ (Ctrl-C stops it)\n"
        ),
    )?;
    tokio::select! {
        () = server => Ok(()),
        () = stopped() => Ok(()),
    }
}

/// Lists one object of each kind the dashboard watches, so that missing RBAC or an unreachable
/// cluster is one clear line before anything is served.
async fn check_access(client: &Client, namespace: Option<&str>) -> Result<(), Error> {
    let one = ListParams::default().limit(1);
    let what = |kind: &str, e: kube::Error| match Error::from(e) {
        Error::Forbidden(m) => {
            Error::Forbidden(format!("the dashboard lists and watches {kind}: {m}"))
        }
        other => other,
    };
    api::<MicroService>(client, namespace)
        .list(&one)
        .await
        .map_err(|e| what("MicroServices", e))?;
    api::<Pod>(client, namespace)
        .list(&one)
        .await
        .map_err(|e| what("pods", e))?;
    api::<Event>(client, namespace)
        .list(&one)
        .await
        .map_err(|e| what("events.k8s.io Events", e))?;
    Ok(())
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Waits until every watch has listed once; a watch the API server refuses ends the wait at
/// once.
async fn wait_synced(fleet: &Fleet) -> Result<(), Error> {
    let mut changes = fleet.subscribe();
    let wait = async {
        loop {
            if let Some((feed, message)) = fleet.forbidden() {
                return Err(Error::Forbidden(format!(
                    "the dashboard watches {}: {message}",
                    feed.as_str()
                )));
            }
            if fleet.synced() {
                return Ok(());
            }
            if changes.changed().await.is_err() {
                return Err(Error::Refused("the watches stopped".into()));
            }
        }
    };
    match tokio::time::timeout(SYNC_TIMEOUT, wait).await {
        Ok(done) => done,
        Err(_) => Err(Error::TimedOut {
            after: SYNC_TIMEOUT,
            what: format!("listing the fleet: {}", fleet.snapshot().errors.join("; ")),
        }),
    }
}

/// Feeds `fleet` from a watch until the dashboard stops; errors are recorded (the page shows
/// them) while the watcher retries with its back-off.
async fn feed<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    fleet: &Fleet,
    which: Feed,
    apply: impl Fn(&Fleet, watcher::Event<K>),
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => apply(fleet, event),
            Err(e) => fleet.on_error(which, feed_error(&e)),
        }
    }
}

fn feed_error(e: &watcher::Error) -> FeedError {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    FeedError {
        message: e.to_string(),
        forbidden: status == Some(403),
    }
}

/// The MicroServices.
async fn follow_msvcs(client: Client, namespace: Option<String>, fleet: Fleet) {
    let stream = watcher(
        api::<MicroService>(&client, namespace.as_deref()),
        watcher::Config::default(),
    )
    .default_backoff();
    feed(stream, &fleet, Feed::MicroServices, |f, e| {
        f.on_msvc(e, Timestamp::now())
    })
    .await;
}

/// The pods Flotilla manages (the operator labels every pod it creates).
async fn follow_pods(client: Client, namespace: Option<String>, fleet: Fleet) {
    let selector = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
    let stream = watcher(
        api::<Pod>(&client, namespace.as_deref()),
        watcher::Config::default().labels(&selector),
    )
    .default_backoff();
    feed(stream, &fleet, Feed::Pods, Fleet::on_pod).await;
}

/// Events, of which the state keeps those about MicroServices (not every API server can select
/// Events by the kind they regard).
async fn follow_events(client: Client, namespace: Option<String>, fleet: Fleet) {
    let stream = watcher(
        api::<Event>(&client, namespace.as_deref()),
        watcher::Config::default(),
    )
    .default_backoff();
    feed(stream, &fleet, Feed::Events, Fleet::on_event).await;
}

/// Ctrl-C or SIGTERM.
async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
