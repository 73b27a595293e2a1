//! Autoscaling on and off: the HPA is created and deleted, and the Deployment's replica count
//! is handed to the HPA without resetting it, then taken back.

use crate::support::*;
use anyhow::Result;
use flotilla_operator::apply::applies_replicas;

#[tokio::test]
async fn autoscaling_on_and_off() -> Result<()> {
    // Turning autoscaling on creates the HPA and releases spec.replicas; turning it off deletes
    // the HPA and Flotilla owns the replica count again.
    let env = start("autoscale").await?;
    let mut s = spec("flotilla/users:0.1.0");
    s.replicas = 3;
    env.create("users", s).await?;
    let d = env
        .wait("the Deployment owning replicas", || async {
            let d = env.deployments().get_opt("users").await?;
            Ok(d.filter(|d| applies_replicas(d, "flotilla")))
        })
        .await?;
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(3));

    env.patch_spec(
        "users",
        serde_json::json!({"autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70}}),
    )
    .await?;
    let hpa = env
        .wait("the HPA", || async {
            Ok(env.hpas().get_opt("users").await?)
        })
        .await?;
    let hs = hpa.spec.unwrap_or_default();
    assert_eq!((hs.min_replicas, hs.max_replicas), (Some(2), 5));
    assert_eq!(hs.scale_target_ref.name, "users");
    let released = env
        .wait("replicas released by flotilla", || async {
            let d = env.deployments().get("users").await?;
            Ok((!applies_replicas(&d, "flotilla")).then_some(d))
        })
        .await?;
    // The count was handed over, not reset to the default of 1.
    assert_eq!(released.spec.and_then(|s| s.replicas), Some(3));

    // Someone (the HPA) scales; Flotilla does not fight it.
    let scale = serde_json::json!({"spec": {"replicas": 4}});
    env.deployments()
        .patch(
            "users",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&scale),
        )
        .await?;
    env.patch_spec(
        "users",
        serde_json::json!({"podAnnotations": {"touched": "yes"}}),
    )
    .await?;
    let touched = env
        .wait("the annotation change", || async {
            let d = env.deployments().get("users").await?;
            Ok(template_annotation(&d, "touched").map(|_| d))
        })
        .await?;
    assert_eq!(touched.spec.and_then(|s| s.replicas), Some(4));

    env.patch_spec("users", serde_json::json!({"autoscaling": null}))
        .await?;
    env.wait("the HPA to be deleted", || async {
        Ok(env.hpas().get_opt("users").await?.is_none().then_some(()))
    })
    .await?;
    env.wait("replicas owned again", || async {
        let d = env.deployments().get("users").await?;
        let owned =
            applies_replicas(&d, "flotilla") && d.spec.as_ref().and_then(|s| s.replicas) == Some(3);
        Ok(owned.then_some(()))
    })
    .await?;
    env.stop_operator().await?;
    Ok(())
}
