//! Best-effort core/v1 Events, as the kubelet and controllers emit them (`kubectl get events`,
//! `kubectl describe`). A failed event write is logged at debug level and dropped, as client-go's
//! broadcaster drops events it cannot deliver; it never blocks the caller's work for long.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::Resource;

/// Writes Events on behalf of a component on this node.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    host: String,
}

/// Normal or Warning, as the Event API spells them.
#[derive(Clone, Copy, Debug)]
pub enum Severity {
    Normal,
    Warning,
}

impl Recorder {
    pub fn new(client: kube::Client, host: &str) -> Self {
        Self {
            client,
            host: host.into(),
        }
    }

    /// A reference to `obj` for `involvedObject`.
    pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
        let meta = obj.meta();
        ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            field_path: None,
        }
    }

    /// Emits an Event about `object` from `component` (e.g. `kubelet`, `deployment-controller`).
    pub async fn emit(
        &self,
        component: &str,
        object: ObjectReference,
        severity: Severity,
        reason: &str,
        message: String,
    ) {
        let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
        let now = Time(jiff::Timestamp::now());
        let name = format!(
            "{}.{:x}",
            object.name.as_deref().unwrap_or("object"),
            now.0.as_nanosecond() as u128 ^ u128::from(rand::random::<u32>())
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(
                match severity {
                    Severity::Normal => "Normal",
                    Severity::Warning => "Warning",
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some(component.into()),
                host: Some(self.host.clone()),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some(component.into()),
            reporting_instance: Some(self.host.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let pp = PostParams::default();
        match tokio::time::timeout(Duration::from_secs(5), api.create(&pp, &event)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, reason, "event not recorded"),
            Err(_) => tracing::debug!(reason, "event write timed out"),
        }
    }
}
