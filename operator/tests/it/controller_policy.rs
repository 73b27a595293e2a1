//! The admission policy against a real API server: a MicroService asking for an image the
//! operator's `--allowed-image-prefixes` does not allow gets nothing applied and says why in
//! its status; an allowed one converges; a later refused change leaves the running Deployment
//! alone.

use crate::support::*;
use anyhow::{ensure, Result};
use flotilla_crds::{conditions, reasons, MicroService};
use flotilla_operator::admission::AdmissionPolicy;
use flotilla_operator::OperatorConfig;

const ALLOWED: &str = "registry.example.com/shop/";

/// The harness with the operator in-process, allowing only images under [`ALLOWED`].
async fn start_with_policy(test: &str) -> Result<Harness> {
    let config = OperatorConfig {
        policy: AdmissionPolicy {
            image_prefixes: vec![ALLOWED.to_string()],
            ..AdmissionPolicy::default()
        },
        ..test_config()
    };
    Harness::builder(test)
        .timeout(WAIT)
        .operator(InProcess::launcher(move |client, shutdown| {
            flotilla_operator::run(client, config.clone(), shutdown)
        }))
        .start()
        .await
}

/// The condition `type_` of `ms` as (status, reason, message).
fn full_condition(ms: &MicroService, type_: &str) -> Option<(String, String, String)> {
    ms.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Whether `ms`'s status describes its current generation with Ready=False/PolicyRefused.
fn refused(ms: &MicroService) -> bool {
    let current = ms.status.as_ref().and_then(|s| s.observed_generation) == ms.metadata.generation;
    current
        && condition(ms, conditions::READY)
            == Some(("False".into(), reasons::POLICY_REFUSED.into()))
}

#[tokio::test]
async fn refused_image_is_reported_and_allowed_one_converges() -> Result<()> {
    // An image outside the allowed prefixes: Ready=False and Degraded=True with reason
    // PolicyRefused, a message naming the field, the image and the allowed prefixes, an Event,
    // and no Deployment.
    let env = start_with_policy("policy").await?;
    env.create("users", spec("evil.example.com/miner:1"))
        .await?;
    let ms = env
        .wait("Ready=False/PolicyRefused", || async {
            let ms = env.msvcs().get("users").await?;
            Ok(refused(&ms).then_some(ms))
        })
        .await?;
    let want = format!(
        "refused by the operator's policy: spec.image: \"evil.example.com/miner:1\" is not \
         allowed by the operator's policy (allowed image prefixes {ALLOWED})"
    );
    for (type_, status) in [(conditions::READY, "False"), (conditions::DEGRADED, "True")] {
        assert_eq!(
            full_condition(&ms, type_),
            Some((
                status.to_string(),
                reasons::POLICY_REFUSED.to_string(),
                want.clone()
            )),
            "{type_}"
        );
    }
    ensure!(
        env.deployments().get_opt("users").await?.is_none(),
        "a refused MicroService got a Deployment"
    );
    env.wait("a PolicyRefused Event", || async {
        let reasons = env.event_reasons("users").await?;
        Ok(reasons
            .iter()
            .any(|r| r == flotilla_crds::reasons::POLICY_REFUSED)
            .then_some(()))
    })
    .await?;

    // An allowed image converges: the Deployment runs it and nothing is degraded.
    let allowed = format!("{ALLOWED}users:0.1.0");
    env.patch_spec("users", serde_json::json!({"image": allowed}))
        .await?;
    env.wait("the Deployment with the allowed image", || async {
        let d = env.deployments().get_opt("users").await?;
        Ok(d.and_then(|d| container(&d))
            .filter(|c| c.image.as_deref() == Some(allowed.as_str()))
            .map(|_| ()))
    })
    .await?;
    env.wait("Degraded=False", || async {
        let ms = env.msvcs().get("users").await?;
        let current =
            ms.status.as_ref().and_then(|s| s.observed_generation) == ms.metadata.generation;
        let clear = condition(&ms, conditions::DEGRADED).map(|c| c.0) == Some("False".into());
        Ok((current && clear).then_some(()))
    })
    .await?;

    // A refused change is not applied: the Deployment keeps the allowed image.
    env.patch_spec(
        "users",
        serde_json::json!({"image": "evil.example.com/miner:2"}),
    )
    .await?;
    env.wait("Ready=False/PolicyRefused after the change", || async {
        let ms = env.msvcs().get("users").await?;
        Ok(refused(&ms).then_some(()))
    })
    .await?;
    let d = env.deployments().get("users").await?;
    assert_eq!(
        container(&d).and_then(|c| c.image),
        Some(allowed),
        "the refused image reached the Deployment"
    );
    env.stop_operator().await?;
    Ok(())
}
