//! Injected API failures (500, 409, 503) are retried and the MicroService converges.

use crate::support::*;
use anyhow::Result;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::Api;

#[tokio::test]
async fn injected_errors_are_retried_until_converged() -> Result<()> {
    // Failing applies of the Deployment (500) and Service (409), and an unavailable ConfigMap
    // endpoint (503), delay convergence but do not prevent it.
    let env = start("faults").await?;
    let faults = env.kubesim()?.faults();
    faults.fail_next("patch", "deployments", 500, 3);
    faults.fail_next("patch", "services", 409, 2);
    faults.fail_next("patch", "configmaps", 503, 2);
    let mut s = spec("flotilla/users:0.1.0");
    s.config = Some([("A".to_string(), "1".to_string())].into());
    env.create("users", s).await?;
    env.wait("all children", || async {
        let d = env.deployments().get_opt("users").await?;
        let s = env.services().get_opt("users").await?;
        let c = env.config_maps().get_opt("users-config").await?;
        Ok((d.is_some() && s.is_some() && c.is_some()).then_some(()))
    })
    .await?;
    env.wait("status for the current generation", || async {
        let ms = env.msvcs().get("users").await?;
        let observed = ms.status.as_ref().and_then(|s| s.observed_generation);
        Ok((observed.is_some() && observed == ms.metadata.generation).then_some(()))
    })
    .await?;

    // The failures really happened: each was reported as a Warning event.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    env.wait("failure events", || async {
        let list = events.list(&ListParams::default()).await?;
        let saw = |reason: &str, kind: &str| {
            list.items.iter().any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.note.as_deref().is_some_and(|n| n.contains(kind))
            })
        };
        let saw_500 = saw("APIServerError", "Deployment");
        let saw_409 = saw("Conflict", "Service");
        Ok((saw_500 && saw_409).then_some(()))
    })
    .await?;

    // Dropped watches are re-established and changes still arrive.
    faults.drop_watches();
    env.patch_spec(
        "users",
        serde_json::json!({"image": "flotilla/users:0.2.0"}),
    )
    .await?;
    env.wait("the image change after dropped watches", || async {
        let d = env.deployments().get("users").await?;
        Ok(
            (container(&d).and_then(|c| c.image).as_deref() == Some("flotilla/users:0.2.0"))
                .then_some(()),
        )
    })
    .await?;

    // Status writes failing with 500 are retried too.
    faults.fail_next("patch", "microservices/status", 500, 2);
    env.patch_spec("users", serde_json::json!({"replicas": 2}))
        .await?;
    env.wait("status after failing status writes", || async {
        let ms = env.msvcs().get("users").await?;
        let observed = ms.status.as_ref().and_then(|s| s.observed_generation);
        Ok((observed == ms.metadata.generation).then_some(()))
    })
    .await?;
    env.stop_operator().await?;
    Ok(())
}
