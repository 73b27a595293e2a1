//! Dependencies and permanent errors are reported in status rather than retried in a loop.

use crate::support::*;
use anyhow::Result;
use flotilla_crds::{conditions, reasons};

#[tokio::test]
async fn missing_dependency_is_degraded_until_it_appears() -> Result<()> {
    // A dependency that does not exist makes the MicroService Degraded with DependencyMissing;
    // once it exists, the condition clears and the URL uses its Service port.
    let env = start("deps").await?;
    let mut s = spec("flotilla/auth:0.1.0");
    s.dependencies = Some(vec!["users".into()]);
    env.create("auth", s).await?;
    let ns = env.ns.clone();
    let degraded = env
        .wait("Degraded/DependencyMissing", || async {
            let ms = env.msvcs().get("auth").await?;
            let c = condition(&ms, conditions::DEGRADED);
            Ok((c == Some(("True".into(), reasons::DEPENDENCY_MISSING.into()))).then_some(ms))
        })
        .await?;
    let msg = degraded
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded");
    assert!(msg.is_some_and(|c| c.message.contains("users")));
    let d = env.deployments().get("auth").await?;
    let url = container(&d)
        .and_then(|c| c.env)
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "USERS_URL");
    assert_eq!(
        url.and_then(|e| e.value),
        Some(format!("http://users.{ns}.svc.cluster.local:80"))
    );

    let mut users = spec("flotilla/users:0.1.0");
    users.service.port = 8081;
    env.create("users", users).await?;
    env.wait("Degraded to clear", || async {
        let ms = env.msvcs().get("auth").await?;
        Ok(
            (condition(&ms, conditions::DEGRADED).map(|c| c.0).as_deref() == Some("False"))
                .then_some(()),
        )
    })
    .await?;
    env.wait("USERS_URL with the dependency's port", || async {
        let d = env.deployments().get("auth").await?;
        let url = container(&d)
            .and_then(|c| c.env)
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == "USERS_URL");
        let want = format!("http://users.{ns}.svc.cluster.local:8081");
        Ok((url.and_then(|e| e.value) == Some(want)).then_some(()))
    })
    .await?;
    env.stop_operator().await?;
    Ok(())
}

#[tokio::test]
async fn unrealisable_spec_is_reported_in_status() -> Result<()> {
    // A spec the schema accepts but the operator cannot build (a config key that is not a valid
    // ConfigMap key) is Degraded/InvalidSpec naming the field, and nothing is applied.
    let env = start("invalid").await?;
    let mut s = spec("flotilla/auth:0.1.0");
    s.config = Some([("bad key".to_string(), "v".to_string())].into());
    env.create("auth", s).await?;
    let ms = env
        .wait("Degraded/InvalidSpec", || async {
            let ms = env.msvcs().get("auth").await?;
            let c = condition(&ms, conditions::DEGRADED);
            Ok((c == Some(("True".into(), reasons::INVALID_SPEC.into()))).then_some(ms))
        })
        .await?;
    let c = ms
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded");
    assert!(c.is_some_and(|c| c.message.contains("spec.config[bad key]")));
    assert!(env.deployments().get_opt("auth").await?.is_none());

    // Fixing the spec converges.
    env.patch_spec("auth", serde_json::json!({"config": null}))
        .await?;
    env.patch_spec("auth", serde_json::json!({"config": {"good_key": "v"}}))
        .await?;
    env.wait("the Deployment after the fix", || async {
        Ok(env.deployments().get_opt("auth").await?)
    })
    .await?;
    env.stop_operator().await?;
    Ok(())
}
