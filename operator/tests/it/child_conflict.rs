//! Flotilla never takes over an object it did not create: a MicroService whose Deployment,
//! Service, ConfigMap or HPA name is taken by a stranger reports it and leaves it alone.

use std::collections::BTreeMap;

use crate::support::*;
use anyhow::{ensure, Context, Result};
use flotilla_crds::conditions::DEGRADED;
use flotilla_crds::{labels, reasons, AutoscalingSpec, MicroService};
use kube::api::{DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

/// A stranger object: the apply must not touch it, so its resourceVersion must not move.
struct Stranger {
    kind: &'static str,
    name: String,
    resource_version: Option<String>,
}

async fn create<K>(env: &Harness, manifest: serde_json::Value) -> Result<Stranger>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(manifest)?;
    let created = env.api::<K>().create(&PostParams::default(), &obj).await?;
    Ok(Stranger {
        kind: match K::kind(&()).as_ref() {
            "Deployment" => "Deployment",
            "Service" => "Service",
            "ConfigMap" => "ConfigMap",
            _ => "HorizontalPodAutoscaler",
        },
        name: created.name_any(),
        resource_version: created.resource_version(),
    })
}

/// Checks the stranger is still there, unwritten and without an owner.
async fn untouched<K>(env: &Harness, s: &Stranger) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let live = env
        .api::<K>()
        .get_opt(&s.name)
        .await?
        .with_context(|| format!("{} {} was deleted", s.kind, s.name))?;
    ensure!(
        live.resource_version() == s.resource_version,
        "{} {} was written",
        s.kind,
        s.name
    );
    ensure!(
        live.owner_references().is_empty(),
        "{} {} got owners",
        s.kind,
        s.name
    );
    Ok(())
}

fn labelled(name: &str) -> serde_json::Value {
    // Carries Flotilla's labels, so it sits in the operator's cache: labels are not ownership.
    json!({"name": name, "labels": {(labels::MANAGED_BY): labels::MANAGED_BY_VALUE}})
}

#[tokio::test]
async fn strangers_named_like_children_are_reported_and_left_alone() -> Result<()> {
    // One MicroService per child kind, each colliding with a stranger of that kind: each reports
    // Degraded/ChildConflict naming the object, with an Event; the strangers are never written
    // and survive the MicroService's deletion.
    let env = start("child-conflict").await?;
    env.run(|env| {
        Box::pin(async move {
            let deployment = create::<k8s_openapi::api::apps::v1::Deployment>(env, json!({
                "metadata": labelled("dep-taken"),
                "spec": {"selector": {"matchLabels": {"app": "mine"}}, "template": {
                    "metadata": {"labels": {"app": "mine"}},
                    "spec": {"containers": [{"name": "mine", "image": "mine:1"}]}}}
            }))
            .await?;
            let service = create::<k8s_openapi::api::core::v1::Service>(env, json!({
                "metadata": {"name": "svc-taken"},
                "spec": {"selector": {"app": "mine"}, "ports": [{"port": 9999}]}
            }))
            .await?;
            let config_map = create::<k8s_openapi::api::core::v1::ConfigMap>(env, json!({
                "metadata": {"name": "cm-taken-config"}, "data": {"mine": "yes"}
            }))
            .await?;
            let hpa = create::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>(env, json!({
                "metadata": {"name": "hpa-taken"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mine"},
                         "minReplicas": 1, "maxReplicas": 2}
            }))
            .await?;

            env.create("dep-taken", spec("flotilla/users:0.1.0")).await?;
            env.create("svc-taken", spec("flotilla/users:0.1.0")).await?;
            let mut with_config = spec("flotilla/users:0.1.0");
            with_config.config = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
            env.create("cm-taken", with_config).await?;
            let mut scaled = spec("flotilla/users:0.1.0");
            scaled.autoscaling = Some(AutoscalingSpec {
                min_replicas: 1,
                max_replicas: 3,
                target_cpu_utilization_percentage: Some(70),
                target_memory_utilization_percentage: None,
                scale_down_stabilization_seconds: None,
            });
            env.create("hpa-taken", scaled).await?;

            for (ms, s) in [
                ("dep-taken", &deployment),
                ("svc-taken", &service),
                ("cm-taken", &config_map),
                ("hpa-taken", &hpa),
            ] {
                let named = format!("{} {}", s.kind, s.name);
                let degraded = env
                    .wait(&format!("{ms} to report the conflict"), || async {
                        let m: MicroService = env.msvcs().get(ms).await?;
                        let c = m.status.as_ref().and_then(|st| {
                            st.conditions.iter().find(|c| c.type_ == DEGRADED).cloned()
                        });
                        Ok(c.filter(|c| c.status == "True"))
                    })
                    .await?;
                assert_eq!(degraded.reason, reasons::CHILD_CONFLICT, "{ms}");
                assert!(degraded.message.contains(&named), "{ms}: {}", degraded.message);
                env.wait(&format!("a ChildConflict Event for {ms}"), || async {
                    let reasons = env.event_reasons(ms).await?;
                    Ok(reasons.iter().any(|r| r == reasons::CHILD_CONFLICT).then_some(()))
                })
                .await?;
            }
            // The HPA's MicroService got its other children: wait for them, so the checks below
            // run after every apply of that reconcile.
            env.wait("hpa-taken's Deployment", || async {
                Ok(env.deployments().get_opt("hpa-taken").await?)
            })
            .await?;

            use k8s_openapi::api::apps::v1::Deployment;
            use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
            use k8s_openapi::api::core::v1::{ConfigMap, Service};
            untouched::<Deployment>(env, &deployment).await?;
            untouched::<Service>(env, &service).await?;
            untouched::<ConfigMap>(env, &config_map).await?;
            untouched::<HorizontalPodAutoscaler>(env, &hpa).await?;

            // Deleting the MicroServices collects what Flotilla created, not the strangers.
            for ms in ["dep-taken", "svc-taken", "cm-taken", "hpa-taken"] {
                env.msvcs().delete(ms, &DeleteParams::default()).await?;
            }
            flotilla_testkit::wait::for_deletion(&env.deployments(), "hpa-taken", env.timeout())
                .await?;
            untouched::<Deployment>(env, &deployment).await?;
            untouched::<Service>(env, &service).await?;
            untouched::<ConfigMap>(env, &config_map).await?;
            untouched::<HorizontalPodAutoscaler>(env, &hpa).await?;
            Ok(())
        })
    })
    .await
}
