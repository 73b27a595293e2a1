//! Creating a MicroService: children are applied with owner references, status follows, Events
//! are published, and a deleted child comes back.

use crate::support::*;
use anyhow::Result;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};

#[tokio::test]
async fn create_applies_children_with_owner_refs_and_recreates_deleted_ones() -> Result<()> {
    // Every child of a new MicroService exists, is controlled by it, and is restored if deleted.
    let env = start("create").await?;
    let mut s = spec("flotilla/users:0.1.0");
    s.replicas = 2;
    s.config = Some([("LOG_LEVEL".to_string(), "info".to_string())].into());
    let ms = env.create("users", s).await?;
    let uid = ms.uid().unwrap_or_default();

    let dep = env
        .wait("the Deployment", || async {
            Ok(env.deployments().get_opt("users").await?)
        })
        .await?;
    let svc = env
        .wait("the Service", || async {
            Ok(env.services().get_opt("users").await?)
        })
        .await?;
    let cm = env
        .wait("the ConfigMap", || async {
            Ok(env.config_maps().get_opt("users-config").await?)
        })
        .await?;
    for owners in [
        dep.owner_references(),
        svc.owner_references(),
        cm.owner_references(),
    ] {
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, uid);
        assert_eq!(owners[0].kind, "MicroService");
        assert_eq!(owners[0].controller, Some(true));
    }
    assert_eq!(
        dep.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("flotilla")
    );
    assert_eq!(dep.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert_eq!(
        container(&dep).and_then(|c| c.image).as_deref(),
        Some("flotilla/users:0.1.0")
    );
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("LOG_LEVEL")
            .map(String::as_str),
        Some("info")
    );
    assert!(env.hpas().get_opt("users").await?.is_none());

    let status = env
        .wait("status for the current generation", || async {
            let ms = env.msvcs().get("users").await?;
            let st = ms.status.clone().unwrap_or_default();
            Ok(
                (st.observed_generation == ms.metadata.generation && st.selector.is_some())
                    .then_some(ms),
            )
        })
        .await?;
    assert_eq!(
        condition(&status, "Degraded").map(|c| c.0).as_deref(),
        Some("False")
    );
    assert_eq!(
        status.status.and_then(|s| s.selector).as_deref(),
        Some("app.kubernetes.io/instance=users,app.kubernetes.io/name=users")
    );

    // Events about the children are published through events.k8s.io.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    env.wait("a Created event", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Created"))
            .then_some(()))
    })
    .await?;

    // A deleted child is recreated.
    let old_uid = svc.uid();
    env.services()
        .delete("users", &DeleteParams::default())
        .await?;
    env.wait("the Service to be recreated", || async {
        let svc = env.services().get_opt("users").await?;
        Ok(svc.filter(|s| s.uid() != old_uid).map(|_| ()))
    })
    .await?;

    env.stop_operator().await?;
    Ok(())
}
