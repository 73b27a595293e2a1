//! What kube-controller-manager puts into every namespace: the `default` ServiceAccount and the
//! `kube-root-ca.crt` ConfigMap holding the cluster CA (on secure clusters), so pods can run
//! under `default` and verify the API server. Runs inside the API server on store changes;
//! it only ever creates these two objects when they are missing.

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::Shared;
use crate::registry::ResKey;
use crate::store::{EventType, State};

fn key(plural: &str) -> ResKey {
    ResKey {
        group: String::new(),
        plural: plural.into(),
    }
}

/// Creates the namespace's defaults that are missing.
pub fn ensure(st: &mut State, ns: &str, ca_pem: Option<&str>) {
    let meta = |name: &str| {
        json!({"name": name, "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": crate::api::now()})
    };
    if st.get(&key("serviceaccounts"), ns, "default").is_none() {
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("default")});
        st.put(&key("serviceaccounts"), ns, "default", sa, EventType::Added);
    }
    if let Some(ca) = ca_pem {
        if st.get(&key("configmaps"), ns, "kube-root-ca.crt").is_none() {
            let mut m = meta("kube-root-ca.crt");
            m["annotations"] = json!({"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."});
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": m, "data": {"ca.crt": ca}});
            st.put(
                &key("configmaps"),
                ns,
                "kube-root-ca.crt",
                cm,
                EventType::Added,
            );
        }
    }
}

/// Keeps every namespace's defaults in place until `shutdown`: adds them to new namespaces and
/// recreates them when deleted (as the controllers do). Subscribes before returning, so no
/// namespace created afterwards is missed.
pub fn spawn(shared: Arc<Shared>, ca_pem: Option<String>, shutdown: CancellationToken) {
    let rx = {
        let mut st = shared.store.lock();
        let namespaces: Vec<String> = st
            .list(&crate::api::namespaces_key(), None)
            .iter()
            .filter_map(|n| n.pointer("/metadata/name")?.as_str().map(String::from))
            .collect();
        for ns in &namespaces {
            ensure(&mut st, ns, ca_pem.as_deref());
        }
        st.subscribe()
    };
    tokio::spawn(run(shared, rx, ca_pem, shutdown));
}

async fn run(
    shared: Arc<Shared>,
    mut rx: tokio::sync::broadcast::Receiver<Arc<crate::store::Change>>,
    ca_pem: Option<String>,
    shutdown: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            () = shutdown.cancelled() => return,
            c = rx.recv() => c,
        };
        let change = match change {
            Ok(c) => c,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let ns = if change.res == crate::api::namespaces_key() {
            if change.type_ == EventType::Deleted
                || change
                    .object
                    .pointer("/metadata/deletionTimestamp")
                    .is_some()
            {
                continue;
            }
            change
                .object
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .map(String::from)
        } else if change.type_ == EventType::Deleted
            && (change.res == key("serviceaccounts") || change.res == key("configmaps"))
        {
            Some(change.ns.clone())
        } else {
            None
        };
        let Some(ns) = ns else { continue };
        let mut st = shared.store.lock();
        let live = st
            .get(&crate::api::namespaces_key(), "", &ns)
            .is_some_and(|n| n.pointer("/metadata/deletionTimestamp").is_none());
        if live {
            ensure(&mut st, &ns, ca_pem.as_deref());
        }
    }
}
