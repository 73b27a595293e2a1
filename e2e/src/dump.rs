//! What a failed test prints: every object Flotilla manages in the test namespace, with status,
//! and the namespace's Events, so a failure can be understood from the log alone.

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Service};
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use flotilla_crds::MicroService;

/// A report of the namespace `ns`: objects (as YAML, with status) and Events, oldest first.
/// Listing errors are part of the report rather than a reason to print nothing.
pub async fn namespace_report(client: &Client, ns: &str) -> String {
    let mut out = format!("===== namespace {ns} =====\n");
    section::<MicroService>(client, ns, &mut out).await;
    section::<Deployment>(client, ns, &mut out).await;
    section::<Service>(client, ns, &mut out).await;
    section::<ConfigMap>(client, ns, &mut out).await;
    section::<HorizontalPodAutoscaler>(client, ns, &mut out).await;
    pods(client, ns, &mut out).await;
    events(client, ns, &mut out).await;
    new_events(client, ns, &mut out).await;
    out
}

async fn section<K>(client: &Client, ns: &str, out: &mut String)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).into_owned();
    let _ = writeln!(out, "----- {kind}");
    match Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            for mut obj in list.items {
                // Managed fields are noise when reading a failure.
                obj.meta_mut().managed_fields = None;
                match serde_norway::to_string(&obj) {
                    Ok(yaml) => {
                        let _ = writeln!(out, "{yaml}---");
                    }
                    Err(err) => {
                        let _ = writeln!(out, "{}: not printable: {err}", obj.name_any());
                    }
                }
            }
        }
        Err(err) => {
            let _ = writeln!(out, "listing failed: {err}");
        }
    }
}

/// Pods in one line each: name, phase, IP, readiness, restarts and labels.
async fn pods(client: &Client, ns: &str, out: &mut String) {
    let _ = writeln!(out, "----- Pod");
    match Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            for pod in list.items {
                let status = pod.status.clone().unwrap_or_default();
                let ready = status
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.status)
                    .unwrap_or_default();
                let restarts: i32 = status
                    .container_statuses
                    .unwrap_or_default()
                    .iter()
                    .map(|c| c.restart_count)
                    .sum();
                let _ = writeln!(
                    out,
                    "{} phase={} ip={} ready={ready} restarts={restarts} labels={:?}",
                    pod.name_any(),
                    status.phase.unwrap_or_default(),
                    status.pod_ip.unwrap_or_default(),
                    pod.labels()
                );
            }
        }
        Err(err) => {
            let _ = writeln!(out, "listing failed: {err}");
        }
    }
}

/// Events of the namespace, oldest first.
async fn events(client: &Client, ns: &str, out: &mut String) {
    let _ = writeln!(out, "----- Events");
    match Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(|e| e.metadata.creation_timestamp.clone());
            for event in items {
                let _ = writeln!(
                    out,
                    "{} {}/{} {} {}: {}",
                    event.type_.unwrap_or_default(),
                    event.involved_object.kind.unwrap_or_default(),
                    event.involved_object.name.unwrap_or_default(),
                    event.reason.unwrap_or_default(),
                    event.count.unwrap_or(1),
                    event.message.unwrap_or_default()
                );
            }
        }
        Err(err) => {
            let _ = writeln!(out, "listing failed: {err}");
        }
    }
}

/// events.k8s.io/v1 Events (what the operator writes), oldest first.
async fn new_events(client: &Client, ns: &str, out: &mut String) {
    use k8s_openapi::api::events::v1::Event as NewEvent;
    let _ = writeln!(out, "----- Events (events.k8s.io)");
    match Api::<NewEvent>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(|e| e.metadata.creation_timestamp.clone());
            for event in items {
                let regarding = event.regarding.unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{} {}/{} {}: {}",
                    event.type_.unwrap_or_default(),
                    regarding.kind.unwrap_or_default(),
                    regarding.name.unwrap_or_default(),
                    event.reason.unwrap_or_default(),
                    event.note.unwrap_or_default()
                );
            }
        }
        Err(err) => {
            let _ = writeln!(out, "listing failed: {err}");
        }
    }
}
