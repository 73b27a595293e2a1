//! What a failed test prints: every object Flotilla manages in the test namespace, with status,
//! the pods and their logs, and the namespace's Events, so a failure can be understood from the
//! log alone. The one place that knows what a report contains.

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, LogParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use flotilla_crds::MicroService;

/// Lines of each container's log in a report.
const LOG_LINES: i64 = 30;

/// A report of the namespace `ns`: objects (as YAML, with status), pods, and Events, oldest
/// first. Pod logs are apart ([`pod_logs`]): a local cluster's node keeps them as files.
/// Listing errors are part of the report rather than a reason to print nothing.
pub async fn namespace_report(client: &Client, ns: &str) -> String {
    let mut out = format!("===== namespace {ns} =====\n");
    section::<MicroService>(client, ns, &mut out).await;
    section::<Deployment>(client, ns, &mut out).await;
    section::<Service>(client, ns, &mut out).await;
    section::<ConfigMap>(client, ns, &mut out).await;
    section::<HorizontalPodAutoscaler>(client, ns, &mut out).await;
    section::<EndpointSlice>(client, ns, &mut out).await;
    pods(client, ns, &mut out).await;
    events(client, ns, &mut out).await;
    new_events(client, ns, &mut out).await;
    out
}

/// Lists the `K`s of `ns` (oldest first) and writes one entry per object with `line`; a listing
/// error is written in their place.
async fn list_into<K>(
    client: &Client,
    ns: &str,
    title: &str,
    out: &mut String,
    line: impl Fn(K) -> String,
) where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let _ = writeln!(out, "----- {title}");
    match Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(|obj| obj.meta().creation_timestamp.clone());
            for obj in items {
                let _ = writeln!(out, "{}", line(obj));
            }
        }
        Err(err) => {
            let _ = writeln!(out, "listing failed: {err}");
        }
    }
}

/// Every `K` of `ns` as YAML with status (managed fields left out: noise when reading a failure).
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
    list_into(client, ns, &kind, out, |mut obj: K| {
        obj.meta_mut().managed_fields = None;
        match serde_norway::to_string(&obj) {
            Ok(yaml) => format!("{yaml}---"),
            Err(err) => format!("{}: not printable: {err}", obj.name_any()),
        }
    })
    .await;
}

/// Pods in one line each: name, phase, IP, readiness, restarts and labels.
async fn pods(client: &Client, ns: &str, out: &mut String) {
    list_into(client, ns, "Pod", out, |pod: Pod| {
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
        format!(
            "{} phase={} ip={} ready={ready} restarts={restarts} labels={:?}",
            pod.name_any(),
            status.phase.unwrap_or_default(),
            status.pod_ip.unwrap_or_default(),
            pod.labels()
        )
    })
    .await;
}

/// The last lines of the log of every pod in `ns`, from the API server's `pods/log`.
pub async fn pod_logs(client: &Client, ns: &str) -> String {
    let mut out = String::new();
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(err) => return format!("listing pods failed: {err}"),
    };
    for pod in list.items {
        let name = pod.name_any();
        let params = LogParams {
            tail_lines: Some(LOG_LINES),
            ..LogParams::default()
        };
        let _ = writeln!(out, "----- log of pod {name} (last {LOG_LINES} lines)");
        match api.logs(&name, &params).await {
            Ok(text) => {
                let _ = writeln!(out, "{}", text.trim_end());
            }
            Err(err) => {
                let _ = writeln!(out, "reading the log failed: {err}");
            }
        }
    }
    out
}

/// Core v1 Events (what the kubelet and controllers write), oldest first.
async fn events(client: &Client, ns: &str, out: &mut String) {
    list_into(client, ns, "Events", out, |event: Event| {
        format!(
            "{} {}/{} {} {}: {}",
            event.type_.unwrap_or_default(),
            event.involved_object.kind.unwrap_or_default(),
            event.involved_object.name.unwrap_or_default(),
            event.reason.unwrap_or_default(),
            event.count.unwrap_or(1),
            event.message.unwrap_or_default()
        )
    })
    .await;
}

/// events.k8s.io/v1 Events (what the operator writes), oldest first.
async fn new_events(client: &Client, ns: &str, out: &mut String) {
    use k8s_openapi::api::events::v1::Event as NewEvent;
    list_into(
        client,
        ns,
        "Events (events.k8s.io)",
        out,
        |event: NewEvent| {
            let regarding = event.regarding.unwrap_or_default();
            format!(
                "{} {}/{} {}: {}",
                event.type_.unwrap_or_default(),
                regarding.kind.unwrap_or_default(),
                regarding.name.unwrap_or_default(),
                event.reason.unwrap_or_default(),
                event.note.unwrap_or_default()
            )
        },
    )
    .await;
}
