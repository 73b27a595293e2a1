//! The end-to-end suite: the same scenarios on any cluster. With `FLOTILLA_E2E_KUBECONFIG` set to
//! a kubeconfig they run against that cluster, where the operator was installed with the chart;
//! without, each test starts a local kubesim cluster with the operator and runs the sample
//! services as local processes.
//!
//! Every test runs in its own namespace labelled `e2e.flotilla.rs/test=<name>`, waits on
//! conditions with deadlines, and prints the namespace's objects and Events when it fails.
//!
//! Failover scenarios (fault injection, ejection, failover and failback) go in
//! `tests/it/failover.rs` with the same harness: `run_test` for the namespace and the failure report,
//! `msvc::sample`/`apply_sample` for the services, `http::service_request` for traffic through a
//! Service, and `Harness::stop_operator`/`start_operator` on the local cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_crds::{labels, MicroService, MicroServiceSpec};
use flotilla_e2e::env::run_test;
use flotilla_e2e::{http, msvc};
use flotilla_testkit::{wait, Harness};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Deadline for children to appear, change or go away after a MicroService change.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Objects of kind `K` that the operator manages for the MicroService `name` (by label).
async fn children<K>(h: &Harness, name: &str) -> Result<Vec<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let selector = format!(
        "{}={name},{}={}",
        labels::INSTANCE,
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    );
    let list = h
        .api::<K>()
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(list.items)
}

/// The one child of kind `K` of `owner`, checking that `owner` is its controller.
async fn child<K>(h: &Harness, owner: &MicroService) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let name = owner.name_any();
    let mut found: Vec<K> = children(h, &name).await?;
    ensure!(
        found.len() == 1,
        "expected one {kind} for {name}, found {}",
        found.len()
    );
    let obj = found.remove(0);
    let controller = obj
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true))
        .with_context(|| format!("{kind} {} has no controller reference", obj.name_any()))?;
    ensure!(
        controller.kind == "MicroService" && Some(&controller.uid) == owner.metadata.uid.as_ref(),
        "{kind} {} is controlled by {controller:?}",
        obj.name_any()
    );
    Ok(obj)
}

/// The standard labels every child carries (shared contract).
fn check_standard_labels(
    obj_labels: &BTreeMap<String, String>,
    name: &str,
    ns: &str,
) -> Result<()> {
    for (key, value) in [
        (labels::NAME, name),
        (labels::INSTANCE, name),
        (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
        (labels::PART_OF, ns),
    ] {
        ensure!(
            obj_labels.get(key).map(String::as_str) == Some(value),
            "label {key} is {:?}, want {value}",
            obj_labels.get(key)
        );
    }
    Ok(())
}

/// Applies the sample users and auth manifests and waits until both are Ready. Users runs one
/// replica: its default SQLite database is a file per pod, so with two a user created through one
/// pod would be unknown to the other.
async fn deploy_samples(h: &Harness) -> Result<(MicroService, MicroService)> {
    let mut users = msvc::sample("users")?;
    users.msvc.spec.replicas = 1;
    let users = msvc::apply_sample(h, &users).await?;
    let auth = msvc::apply_sample(h, &msvc::sample("auth")?).await?;
    let users = msvc::wait_ready(h, &users.name_any()).await?;
    let auth = msvc::wait_ready(h, &auth.name_any()).await?;
    Ok((users, auth))
}

/// The sample MicroService `name`, with its Secrets already applied to the test namespace.
async fn sample_with_secrets(h: &Harness, name: &str) -> Result<MicroService> {
    let sample = msvc::sample(name)?;
    msvc::apply_secrets(h, &sample).await?;
    Ok(sample.msvc)
}

fn spec_replicas(spec: &MicroServiceSpec) -> Option<i32> {
    spec.autoscaling.is_none().then_some(spec.replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_become_ready_with_their_children() -> Result<()> {
    // Creating the sample MicroServices yields Ready services whose Deployment, Service,
    // ConfigMap and HPA match their specs and are controlled by them.
    run_test("samples_become_ready_with_their_children", |h| {
        Box::pin(async move {
            let (users, auth) = deploy_samples(h).await?;
            for owner in [&users, &auth] {
                let name = owner.name_any();
                let deployment: Deployment = child(h, owner).await?;
                check_standard_labels(deployment.labels(), &name, &h.ns)?;
                let dspec = deployment.spec.clone().context("Deployment has no spec")?;
                if let Some(replicas) = spec_replicas(&owner.spec) {
                    ensure!(
                        dspec.replicas == Some(replicas),
                        "{name}: replicas {:?}",
                        dspec.replicas
                    );
                }
                let pod = dspec.template.spec.context("no pod template spec")?;
                let container = pod.containers.first().context("no container")?;
                ensure!(container.image.as_deref() == Some(owner.spec.image.as_str()));

                let service: Service = child(h, owner).await?;
                ensure!(
                    service.name_any() == name,
                    "Service is named {}",
                    service.name_any()
                );
                let port = service
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref())
                    .and_then(|p| p.first())
                    .context("Service has no port")?;
                ensure!(port.port == owner.spec.service.port);
                ensure!(
                    port.target_port == Some(IntOrString::String(owner.spec.port_name.clone())),
                    "targetPort {:?}",
                    port.target_port
                );

                let config_maps: Vec<ConfigMap> = children(h, &name).await?;
                match &owner.spec.config {
                    Some(config) if !config.is_empty() => {
                        let cm: ConfigMap = child(h, owner).await?;
                        ensure!(
                            cm.data.as_ref() == Some(config),
                            "{name}: ConfigMap data {:?}",
                            cm.data
                        );
                    }
                    _ => ensure!(config_maps.is_empty(), "{name}: unexpected ConfigMap"),
                }
                let hpas: Vec<HorizontalPodAutoscaler> = children(h, &name).await?;
                match &owner.spec.autoscaling {
                    Some(autoscaling) => {
                        let hpa: HorizontalPodAutoscaler = child(h, owner).await?;
                        let hspec = hpa.spec.context("HPA has no spec")?;
                        ensure!(hspec.max_replicas == autoscaling.max_replicas);
                        ensure!(hspec.scale_target_ref.name == deployment.name_any());
                    }
                    None => ensure!(hpas.is_empty(), "{name}: unexpected HPA"),
                }
            }

            // auth calls users through the URL the operator injects for its dependency.
            let deployment: Deployment = child(h, &auth).await?;
            let env = deployment
                .spec
                .and_then(|s| s.template.spec)
                .and_then(|s| s.containers.into_iter().next())
                .and_then(|c| c.env)
                .unwrap_or_default();
            ensure!(
                env.iter().any(|e| e.name == "USERS_URL"),
                "auth has no USERS_URL: {env:?}"
            );
            Ok(())
        })
    })
    .await
}

/// The pod-template annotations of the MicroService's Deployment.
async fn template_annotations(
    h: &Harness,
    owner: &MicroService,
) -> Result<BTreeMap<String, String>> {
    let deployment: Deployment = child(h, owner).await?;
    Ok(deployment
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default())
}

/// Names of the running pods of the MicroService `name`.
async fn pod_names(h: &Harness, name: &str) -> Result<Vec<String>> {
    let pods: Vec<Pod> = h
        .pods()
        .list(&ListParams::default().labels(&format!("{}={name}", labels::INSTANCE)))
        .await?
        .items;
    let mut names: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_and_config_changes_roll_out() -> Result<()> {
    // A spec change (replicas) and a config change each reach the children: the status follows
    // the new generation, and a config change replaces the pods (config hash in the template).
    run_test("spec_and_config_changes_roll_out", |h| {
        Box::pin(async move {
            let mut users = sample_with_secrets(h, "users").await?;
            users.spec.replicas = 1;
            users.spec.autoscaling = None;
            users
                .spec
                .config
                .get_or_insert_with(BTreeMap::new)
                .insert("GREETING".to_owned(), "hello".to_owned());
            h.apply(&users).await?;
            let ready = msvc::wait_ready(h, &users.name_any()).await?;
            let first_generation = ready.metadata.generation;
            let hash_before = template_annotations(h, &ready).await?;
            let pods_before = pod_names(h, &users.name_any()).await?;
            ensure!(pods_before.len() == 1, "pods {pods_before:?}");

            // Spec change: scale to two.
            users.spec.replicas = 2;
            h.apply(&users).await?;
            let ready = msvc::wait_ready(h, &users.name_any()).await?;
            ensure!(
                ready.metadata.generation > first_generation,
                "generation did not move"
            );
            ensure!(ready.status.as_ref().and_then(|s| s.ready_replicas) == Some(2));
            let deployment: Deployment = child(h, &ready).await?;
            ensure!(deployment.spec.and_then(|s| s.replicas) == Some(2));

            // Config change: ConfigMap updated, pods rolled.
            users
                .spec
                .config
                .get_or_insert_with(BTreeMap::new)
                .insert("GREETING".to_owned(), "bonjour".to_owned());
            h.apply(&users).await?;
            let ready = msvc::wait_ready(h, &users.name_any()).await?;
            let cm: ConfigMap = child(h, &ready).await?;
            ensure!(cm.data.and_then(|d| d.get("GREETING").cloned()).as_deref() == Some("bonjour"));
            let hash_after = template_annotations(h, &ready).await?;
            ensure!(
                hash_after.contains_key(flotilla_crds::annotations::CONFIG_HASH)
                    && hash_after.get(flotilla_crds::annotations::CONFIG_HASH)
                        != hash_before.get(flotilla_crds::annotations::CONFIG_HASH),
                "config hash did not change: {hash_before:?} -> {hash_after:?}"
            );
            let name = users.name_any();
            h.wait_within("the pods to be replaced", CONVERGE_TIMEOUT, || {
                let before = pods_before.clone();
                let name = name.clone();
                async move {
                    let now = pod_names(h, &name).await?;
                    Ok((now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(()))
                }
            })
            .await?;

            // Config removed: the ConfigMap goes away.
            users.spec.config = None;
            h.apply(&users).await?;
            msvc::wait_ready(h, &name).await?;
            h.wait_within("the ConfigMap to be deleted", CONVERGE_TIMEOUT, || {
                let name = name.clone();
                async move {
                    let cms: Vec<ConfigMap> = children(h, &name).await?;
                    Ok(cms.is_empty().then_some(()))
                }
            })
            .await
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_on_and_off() -> Result<()> {
    // Setting autoscaling creates an HPA on the Deployment; removing it deletes the HPA.
    run_test("autoscaling_on_and_off", |h| {
        Box::pin(async move {
            let mut users = sample_with_secrets(h, "users").await?;
            users.spec.autoscaling = None;
            users.spec.replicas = 1;
            h.apply(&users).await?;
            let ready = msvc::wait_ready(h, &users.name_any()).await?;
            let name = ready.name_any();

            let mut with_hpa = users.clone();
            with_hpa.spec.autoscaling = Some(serde_json::from_value(json!({
                "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 80
            }))?);
            h.apply(&with_hpa).await?;
            let hpa = h
                .wait_within("the HPA", CONVERGE_TIMEOUT, || {
                    let name = name.clone();
                    async move {
                        let hpas: Vec<HorizontalPodAutoscaler> = children(h, &name).await?;
                        Ok(hpas.into_iter().next())
                    }
                })
                .await?;
            let hspec = hpa.spec.context("HPA has no spec")?;
            ensure!(hspec.max_replicas == 3 && hspec.min_replicas == Some(1));
            ensure!(hspec.scale_target_ref.kind == "Deployment");

            // Turn autoscaling off the way `kubectl edit` does (a merge patch setting it to null).
            h.msvcs()
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"autoscaling": null}})),
                )
                .await?;
            h.wait_within("the HPA to be deleted", CONVERGE_TIMEOUT, || {
                let name = name.clone();
                async move {
                    let hpas: Vec<HorizontalPodAutoscaler> = children(h, &name).await?;
                    Ok(hpas.is_empty().then_some(()))
                }
            })
            .await?;
            msvc::wait_ready(h, &name).await?;
            Ok(())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_microservice_cascades() -> Result<()> {
    // Deleting a MicroService removes its Deployment, Service, ConfigMap and pods.
    run_test("deleting_a_microservice_cascades", |h| {
        Box::pin(async move {
            let mut users = sample_with_secrets(h, "users").await?;
            users
                .spec
                .config
                .get_or_insert_with(BTreeMap::new)
                .insert("K".to_owned(), "v".to_owned());
            h.apply(&users).await?;
            let ready = msvc::wait_ready(h, &users.name_any()).await?;
            let name = ready.name_any();
            ensure!(!children::<ConfigMap>(h, &name).await?.is_empty());

            h.msvcs().delete(&name, &DeleteParams::foreground()).await?;
            wait::for_deletion(&h.msvcs(), &name, CONVERGE_TIMEOUT).await?;
            h.wait_within(
                "the children to be garbage collected",
                CONVERGE_TIMEOUT,
                || {
                    let name = name.clone();
                    async move {
                        let left = children::<Deployment>(h, &name).await?.len()
                            + children::<Service>(h, &name).await?.len()
                            + children::<ConfigMap>(h, &name).await?.len()
                            + pod_names(h, &name).await?.len();
                        Ok((left == 0).then_some(()))
                    }
                },
            )
            .await
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_round_trip_through_the_auth_service() -> Result<()> {
    // A user created through the users Service can log in through the auth Service, and the
    // token auth hands out verifies: traffic flows Service -> pods -> dependency.
    run_test("login_round_trip_through_the_auth_service", |h| {
        Box::pin(async move {
            let (users, auth) = deploy_samples(h).await?;
            let email = format!("e2e-{}@example.com", &h.ns);
            let password = "correct horse battery staple";
            let created =
                http::sign_up(h, &users.name_any(), &email, password, CONVERGE_TIMEOUT).await?;
            let token = http::log_in(h, &auth.name_any(), &email, password).await?;

            let wrong = http::service_request(
                h,
                &auth.name_any(),
                ::http::Method::POST,
                "/login",
                Some(&json!({"email": email, "password": "wrong"})),
                None,
            )
            .await?;
            ensure!(
                wrong.status == 401,
                "wrong password: {} {}",
                wrong.status,
                wrong.body
            );

            if h.is_local() {
                // Through the API server's proxy a bearer token cannot be forwarded.
                let verified = http::service_request(
                    h,
                    &auth.name_any(),
                    ::http::Method::GET,
                    "/verify",
                    None,
                    Some(&token),
                )
                .await?;
                ensure!(
                    verified.status == 200,
                    "verify: {} {}",
                    verified.status,
                    verified.body
                );
                // The token opens the user's own account in users (which requires one).
                let id = created.get("id").and_then(|v| v.as_str());
                let path = format!("/users/{}", id.context("created user has no id")?);
                let own = http::service_request(
                    h,
                    &users.name_any(),
                    ::http::Method::GET,
                    &path,
                    None,
                    Some(&token),
                )
                .await?;
                ensure!(own.status == 200, "{path}: {} {}", own.status, own.body);
            }
            Ok(())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_child_is_recreated_across_an_operator_restart() -> Result<()> {
    // Drift is corrected: a deleted Service comes back. On the local cluster the Service is
    // deleted while the operator is down, and the restarted operator repairs it from the
    // cluster's state.
    run_test(
        "deleted_child_is_recreated_across_an_operator_restart",
        |h| {
            Box::pin(async move {
                let mut users = sample_with_secrets(h, "users").await?;
                users.spec.replicas = 1;
                h.apply(&users).await?;
                let ready = msvc::wait_ready(h, &users.name_any()).await?;
                let name = ready.name_any();
                let old: Service = child(h, &ready).await?;

                if h.is_local() {
                    ensure!(h.stop_operator().await?, "no operator was running");
                }
                let services: Api<Service> = h.services();
                services.delete(&name, &DeleteParams::default()).await?;
                wait::for_deletion(&services, &name, CONVERGE_TIMEOUT).await?;
                h.start_operator().await?;

                let recreated =
                    wait::for_object(&services, &name, CONVERGE_TIMEOUT, |_| true).await?;
                ensure!(
                    recreated.metadata.uid != old.metadata.uid,
                    "the Service was not recreated"
                );
                let owner = recreated
                    .owner_references()
                    .iter()
                    .find(|r| r.controller == Some(true))
                    .map(|r| r.uid.clone());
                ensure!(
                    owner == ready.metadata.uid,
                    "recreated Service owner {owner:?}"
                );
                msvc::wait_ready(h, &name).await?;
                Ok(())
            })
        },
    )
    .await
}
