//! Everything the plugin shows about one MicroService, read from the API in one go: the object,
//! its stable and canary Deployments, its pods and the Events about it. The only module (with
//! `commands`) that talks to the API server; rendering works on the values read here.

use flotilla_crds::{labels, MicroService};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::error::Error;

/// Suffix of the canary Deployment's name during a guarded rollout's analysis.
pub const CANARY_SUFFIX: &str = "-canary";

/// One MicroService and what it owns, as read at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub msvc: MicroService,
    /// `<name>`: the stable pods (absent before the first reconcile).
    pub stable: Option<Deployment>,
    /// `<name>-canary`: present during an analysis.
    pub canary: Option<Deployment>,
    /// Every pod the MicroService's selector matches, canary pods included.
    pub pods: Vec<Pod>,
    /// Events whose `regarding` is the MicroService, oldest first.
    pub events: Vec<Event>,
}

impl Snapshot {
    /// Reads the MicroService `name` in `namespace` and its children.
    pub async fn fetch(client: &Client, namespace: &str, name: &str) -> Result<Snapshot, Error> {
        let msvcs: Api<MicroService> = Api::namespaced(client.clone(), namespace);
        let msvc = msvcs
            .get(name)
            .await
            .map_err(|e| Error::on(namespace, name, e))?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let stable = deployments.get_opt(name).await?;
        let canary = deployments
            .get_opt(&format!("{name}{CANARY_SUFFIX}"))
            .await?;
        let selector = msvc
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_else(|| default_selector(name));
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let mut pods = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        pods.sort_by_key(|p| p.name_any());
        let events = events_about(client, namespace, &msvc).await?;
        Ok(Snapshot {
            msvc,
            stable,
            canary,
            pods,
            events,
        })
    }

    /// The MicroService's name.
    pub fn name(&self) -> String {
        self.msvc.name_any()
    }

    /// The stable pods: matched by the selector, without the canary track label.
    pub fn stable_pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(|p| !is_canary(p))
    }

    /// The canary pods.
    pub fn canary_pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(|p| is_canary(p))
    }
}

/// Whether the pod carries the canary track label.
pub fn is_canary(pod: &Pod) -> bool {
    pod.labels().get(labels::TRACK).map(String::as_str) == Some(labels::TRACK_CANARY)
}

/// The pods' selector before the operator wrote `status.selector`: the app labels it sets.
fn default_selector(name: &str) -> String {
    format!("{}={name},{}={name}", labels::NAME, labels::INSTANCE)
}

/// Events about `msvc` (by UID when the Event has one), oldest first.
pub async fn events_about(
    client: &Client,
    namespace: &str,
    msvc: &MicroService,
) -> Result<Vec<Event>, Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let uid = msvc.uid();
    let name = msvc.name_any();
    let mut events: Vec<Event> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some(flotilla_crds::KIND)
                    && r.name.as_deref() == Some(name.as_str())
                    && (r.uid.is_none() || uid.is_none() || r.uid == uid)
            })
        })
        .collect();
    events.sort_by_key(event_time);
    Ok(events)
}

/// When an Event last happened: its series' last observation, else its time.
pub fn event_time(e: &Event) -> Option<jiff::Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}
