//! Changing a MicroService: children follow the spec, observedGeneration follows the
//! generation, a config change rolls the pods, and removed config deletes the ConfigMap.

use crate::support::*;
use anyhow::Result;
use flotilla_crds::annotations::CONFIG_HASH;

#[tokio::test]
async fn spec_and_config_changes_reach_the_children() -> Result<()> {
    // Image and config changes are applied; the pod-template hash changes with the config.
    let env = start("update").await?;
    let mut s = spec("flotilla/auth:0.1.0");
    s.config = Some([("LOG_LEVEL".to_string(), "info".to_string())].into());
    env.create("auth", s).await?;
    let first = env
        .wait("the Deployment", || async {
            Ok(env.deployments().get_opt("auth").await?)
        })
        .await?;
    let hash1 = template_annotation(&first, CONFIG_HASH);
    assert!(hash1.is_some());

    // Spec change: new image and replica count.
    let ms = env
        .patch_spec(
            "auth",
            serde_json::json!({"image": "flotilla/auth:0.2.0", "replicas": 3}),
        )
        .await?;
    let generation = ms.metadata.generation;
    env.wait("the new image and replicas", || async {
        let d = env.deployments().get("auth").await?;
        let image = container(&d).and_then(|c| c.image);
        let replicas = d.spec.as_ref().and_then(|s| s.replicas);
        Ok((image.as_deref() == Some("flotilla/auth:0.2.0") && replicas == Some(3)).then_some(()))
    })
    .await?;
    env.wait("observedGeneration to follow", || async {
        let ms = env.msvcs().get("auth").await?;
        Ok((ms.status.and_then(|s| s.observed_generation) == generation).then_some(()))
    })
    .await?;

    // Config change: the ConfigMap and the pod-template hash change (pods roll).
    env.patch_spec(
        "auth",
        serde_json::json!({"config": {"LOG_LEVEL": "debug"}}),
    )
    .await?;
    let rolled = env
        .wait("a new config hash", || async {
            let d = env.deployments().get("auth").await?;
            let h = template_annotation(&d, CONFIG_HASH);
            Ok((h.is_some() && h != hash1).then_some(d))
        })
        .await?;
    assert_eq!(
        container(&rolled).and_then(|c| c.image).as_deref(),
        Some("flotilla/auth:0.2.0")
    );
    let cm = env.config_maps().get("auth-config").await?;
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("LOG_LEVEL")
            .map(String::as_str),
        Some("debug")
    );

    // Config removed: the ConfigMap is deleted and the hash annotation goes away.
    env.patch_spec("auth", serde_json::json!({"config": null}))
        .await?;
    env.wait("the ConfigMap to be deleted", || async {
        Ok(env
            .config_maps()
            .get_opt("auth-config")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    env.wait("the hash annotation to go", || async {
        let d = env.deployments().get("auth").await?;
        Ok(template_annotation(&d, CONFIG_HASH).is_none().then_some(()))
    })
    .await?;
    env.stop_operator().await?;
    Ok(())
}
