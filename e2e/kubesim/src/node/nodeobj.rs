//! The Node object for the simulated node, created when the API server serves nodes.

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};

use super::NodeConfig;

/// Creates (or refreshes the status of) the Node; a server without nodes is fine.
pub async fn register(client: &kube::Client, config: &NodeConfig) {
    let api: Api<Node> = Api::all(client.clone());
    let now = Time(jiff::Timestamp::now());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(
                [
                    (
                        "kubernetes.io/hostname".to_string(),
                        config.node_name.clone(),
                    ),
                    ("kubernetes.io/os".to_string(), "linux".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: None,
        status: None,
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            tracing::info!(error = %e, "API server does not serve nodes; running without a Node object");
            return;
        }
    }
    let status = NodeStatus {
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: config.host_ip.to_string(),
        }]),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("kubesim process kubelet is running".into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now),
        }]),
        ..Default::default()
    };
    let patch = serde_json::json!({ "status": status });
    let pp = kube::api::PatchParams::default();
    if let Err(e) = api
        .patch_status(&config.node_name, &pp, &kube::api::Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, "node status not written");
    }
}
