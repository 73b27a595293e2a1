//! Status mirrors the Deployment: Ready after a complete rollout, Progressing during one,
//! Degraded on ProgressDeadlineExceeded; the scale subresource drives the replica count.

use crate::support::*;
use anyhow::Result;
use flotilla_crds::conditions::{DEGRADED, PROGRESSING, READY};
use kube::api::{Patch, PatchParams};

#[tokio::test]
async fn status_follows_the_deployment_rollout() -> Result<()> {
    // The Deployment's status (written here as its controller would) is reflected in the
    // MicroService's conditions and READY column.
    let env = start("status").await?;
    let mut s = spec("flotilla/users:0.1.0");
    s.replicas = 2;
    env.create("users", s).await?;
    let d = env
        .wait("the Deployment", || async {
            Ok(env.deployments().get_opt("users").await?)
        })
        .await?;
    let waiting = env
        .wait("a first status", || async {
            let ms = env.msvcs().get("users").await?;
            Ok(ms.status.is_some().then_some(ms))
        })
        .await?;
    assert_eq!(
        condition(&waiting, READY).map(|c| c.0).as_deref(),
        Some("False")
    );
    assert_eq!(
        waiting
            .status
            .as_ref()
            .and_then(|s| s.ready.clone())
            .as_deref(),
        Some("0/2")
    );

    let generation = d.metadata.generation;
    let rolled_out = serde_json::json!({"status": {
        "observedGeneration": generation, "replicas": 2, "updatedReplicas": 2,
        "readyReplicas": 2, "availableReplicas": 2,
    }});
    env.deployments()
        .patch_status("users", &PatchParams::default(), &Patch::Merge(&rolled_out))
        .await?;
    let ready = env
        .wait("Ready", || async {
            let ms = env.msvcs().get("users").await?;
            Ok((condition(&ms, READY) == Some(("True".into(), "Available".into()))).then_some(ms))
        })
        .await?;
    assert_eq!(
        ready
            .status
            .as_ref()
            .and_then(|s| s.ready.clone())
            .as_deref(),
        Some("2/2")
    );
    assert_eq!(
        condition(&ready, PROGRESSING).map(|c| c.0).as_deref(),
        Some("False")
    );
    assert_eq!(
        condition(&ready, DEGRADED).map(|c| c.0).as_deref(),
        Some("False")
    );

    let stuck = serde_json::json!({"status": {
        "readyReplicas": 1, "availableReplicas": 1,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                        "message": "ReplicaSet has timed out progressing."}],
    }});
    env.deployments()
        .patch_status("users", &PatchParams::default(), &Patch::Merge(&stuck))
        .await?;
    env.wait("Degraded/ProgressDeadlineExceeded", || async {
        let ms = env.msvcs().get("users").await?;
        let degraded =
            condition(&ms, DEGRADED) == Some(("True".into(), "ProgressDeadlineExceeded".into()));
        Ok(
            (degraded && condition(&ms, READY).map(|c| c.0).as_deref() == Some("False"))
                .then_some(()),
        )
    })
    .await?;
    env.stop_operator().await?;
    Ok(())
}

#[tokio::test]
async fn scale_subresource_sets_replicas() -> Result<()> {
    // `kubectl scale msvc users --replicas 4` goes through the scale subresource to spec.replicas
    // and on to the Deployment.
    let env = start("scale").await?;
    env.create("users", spec("flotilla/users:0.1.0")).await?;
    env.wait("the Deployment", || async {
        Ok(env.deployments().get_opt("users").await?)
    })
    .await?;
    let scale = serde_json::json!({"spec": {"replicas": 4}});
    env.msvcs()
        .patch_scale("users", &PatchParams::default(), &Patch::Merge(&scale))
        .await?;
    env.wait("4 replicas on the Deployment", || async {
        let d = env.deployments().get("users").await?;
        Ok((d.spec.and_then(|s| s.replicas) == Some(4)).then_some(()))
    })
    .await?;
    let sc = env.msvcs().get_scale("users").await?;
    assert_eq!(sc.spec.and_then(|s| s.replicas), Some(4));
    env.stop_operator().await?;
    Ok(())
}
