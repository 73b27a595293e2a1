//! `helm upgrade` from the previous release of the charts to these ones, on live objects, on
//! kubesim with the operator in-cluster (as `chart_helm` runs it): the previous release's CRD,
//! operator chart and samples chart (`e2e/fixtures/previous-charts/`, see its README) are
//! installed and converge; then the CRD is applied and both releases are upgraded to `charts/`
//! as `charts/flotilla/README.md` says. Every Secret the previous releases generated is still
//! there, and every value in it that the new release still carries is the one generated before
//! (nothing is generated again; keys the new chart drops or adds are listed, not failed); the
//! Lease is the same object and is held again; and the MicroServices converge, including a spec
//! change made after the upgrade.
//!
//! Needs root (kubesim mounts the ServiceAccount token at its real path) and helm
//! (`e2e/install-tools.sh`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_crds::{conditions, MicroService};
use flotilla_e2e::walkthrough::{HelmKubesim, Shell};
use flotilla_testkit::cluster::client_from_kubeconfig;
use flotilla_testkit::wait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Each helm/kubectl step on a loaded 2-core machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// Deadline for the cluster to reflect a change, on a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(120);
/// The operator chart's lease duration: a fresh Lease (no holder) gets its first leader after
/// it, and a replica that took over from a released one holds it well within it.
const LEASE_DURATION: Duration = Duration::from_secs(15);

/// The previous release of the charts, as committed for this test.
const PREVIOUS: &str = "e2e/fixtures/previous-charts";

/// `path` (relative to the repository root) as an absolute path of this test's own checkout, so
/// that the charts read are the ones this test was built with.
fn repo_path(path: &str) -> String {
    let e2e = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    e2e.parent()
        .unwrap_or(e2e)
        .join(path)
        .to_string_lossy()
        .into_owned()
}
const OPERATOR_NS: &str = "flotilla-system";
const SAMPLES_NS: &str = "shop";
const LEASE: &str = "flotilla-operator";

/// Secrets by `namespace/name`, with their data.
type Secrets = BTreeMap<String, BTreeMap<String, ByteString>>;

/// The two releases: (name, namespace, chart directory under `charts/` and under [`PREVIOUS`]).
const RELEASES: [(&str, &str, &str); 2] = [
    ("flotilla", OPERATOR_NS, "flotilla"),
    ("samples", SAMPLES_NS, "flotilla-samples"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_from_the_previous_release_keeps_secrets_lease_and_convergence() -> Result<()>
{
    let Some(cluster) = HelmKubesim::up(240, UP_TIMEOUT, STEP_TIMEOUT).await? else {
        return Ok(());
    };
    let sh = &cluster.sh;
    let result = async {
        let client = client_from_kubeconfig(&sh.kubeconfig).await?;
        install_previous(sh, &client).await?;
        let secrets = release_secrets(&client).await?;
        ensure!(
            !secrets.is_empty(),
            "the previous releases generated no Secret"
        );
        println!(
            "Secrets of the previous releases: {:?}",
            secrets.keys().collect::<Vec<_>>()
        );
        let lease = held_lease(&client).await?;
        upgrade(sh).await?;

        let after = release_secrets(&client).await?;
        kept(&secrets, &after)?;
        let held = held_lease(&client).await?;
        ensure!(
            held.uid() == lease.uid(),
            "the upgrade replaced the Lease (uid {:?}, was {:?})",
            held.uid(),
            lease.uid()
        );
        converged(&client, true).await?;
        scale(&client, "users", 2).await
    }
    .await;
    if result.is_err() {
        let objects = ["get", "pods,deploy,lease,msvc,secrets", "-A", "-o", "wide"];
        for args in [&objects[..], &["get", "events", "-A"]] {
            match sh.kubectl(args).await {
                Ok(out) => eprintln!("{out}"),
                Err(e) => eprintln!("{e:#}"),
            }
        }
    }
    cluster.stop(OPERATOR_NS, result.is_err()).await;
    result
}

/// The previous release as its README installed it: its CRD, the operator chart (waiting for
/// the pods), the samples chart; every MicroService converges.
async fn install_previous(sh: &Shell, client: &Client) -> Result<()> {
    let crd = repo_path(&format!(
        "{PREVIOUS}/flotilla/crds/microservices.flotilla.rs.yaml"
    ));
    sh.kubectl(&["apply", "--server-side", "-f", &crd]).await?;
    for (release, ns, chart) in RELEASES {
        let chart = repo_path(&format!("{PREVIOUS}/{chart}"));
        let mut args = vec![
            "install",
            release,
            &chart,
            "--namespace",
            ns,
            "--create-namespace",
        ];
        if ns == OPERATOR_NS {
            args.push("--wait");
        }
        sh.helm(&args).await?;
    }
    // The samples' processes are this checkout's builds, which may expect the current chart's
    // configuration: before the upgrade only the operator's side is required (each MicroService
    // reconciled into its Deployment), not Ready pods.
    converged(client, false).await
}

/// The README's upgrade path: the new CRD, then `helm upgrade` of each release to `charts/`.
async fn upgrade(sh: &Shell) -> Result<()> {
    let crd = repo_path("charts/flotilla/crds/microservices.flotilla.rs.yaml");
    sh.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &crd])
        .await?;
    for (release, ns, chart) in RELEASES {
        let chart = repo_path(&format!("charts/{chart}"));
        let mut args = vec!["upgrade", release, &chart, "--namespace", ns];
        if ns == OPERATOR_NS {
            args.push("--wait");
        }
        sh.helm(&args).await?;
    }
    Ok(())
}

/// Each Secret a release made (Helm's `meta.helm.sh/release-name` annotation), by
/// `namespace/name`, with its data.
async fn release_secrets(client: &Client) -> Result<Secrets> {
    let mut out = BTreeMap::new();
    for (release, ns, _) in RELEASES {
        let secrets = Api::<Secret>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?;
        for s in secrets.items {
            if s.annotations()
                .get("meta.helm.sh/release-name")
                .map(String::as_str)
                != Some(release)
            {
                continue;
            }
            out.insert(format!("{ns}/{}", s.name_any()), s.data.unwrap_or_default());
        }
    }
    Ok(out)
}

/// Fails when a Secret of `before` is gone from `after`, or a key both have changed its value;
/// prints the keys the new release dropped or added.
fn kept(before: &Secrets, after: &Secrets) -> Result<()> {
    let mut carried = 0;
    for (name, data) in before {
        let now = after
            .get(name)
            .with_context(|| format!("the upgrade deleted Secret {name}"))?;
        let changed: Vec<&String> = data
            .iter()
            .filter(|(k, v)| now.get(*k).is_some_and(|n| n != *v))
            .map(|(k, _)| k)
            .collect();
        ensure!(
            changed.is_empty(),
            "the upgrade generated new values for {changed:?} of Secret {name}"
        );
        carried += data.keys().filter(|k| now.contains_key(*k)).count();
        let dropped: Vec<&String> = data.keys().filter(|k| !now.contains_key(*k)).collect();
        let added: Vec<&String> = now.keys().filter(|k| !data.contains_key(*k)).collect();
        println!("Secret {name}: dropped by the new chart {dropped:?}, added {added:?}");
    }
    ensure!(
        carried > 0,
        "no value of the previous releases' Secrets carried over"
    );
    println!("{carried} Secret value(s) carried over unchanged");
    Ok(())
}

/// The Lease once a replica holds it (a fresh one gets its first leader a lease duration after
/// the operator starts).
async fn held_lease(client: &Client) -> Result<Lease> {
    let leases = Api::<Lease>::namespaced(client.clone(), OPERATOR_NS);
    wait::for_object(&leases, LEASE, LEASE_DURATION * 4, |l| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .is_some_and(|h| !h.is_empty())
    })
    .await
    .context("no replica holds the Lease")
}

/// Waits until every MicroService of the samples has been reconciled for its generation (its
/// status observed it and its Deployment exists), and with `ready` is Ready too.
async fn converged(client: &Client, ready: bool) -> Result<()> {
    let msvcs = Api::<MicroService>::namespaced(client.clone(), SAMPLES_NS);
    let names: Vec<String> = msvcs
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    ensure!(
        !names.is_empty(),
        "the samples release made no MicroService"
    );
    let deployments = Api::<Deployment>::namespaced(client.clone(), SAMPLES_NS);
    for name in &names {
        wait::for_object(&msvcs, name, CONVERGE, |m| {
            m.status.as_ref().is_some_and(|s| {
                s.observed_generation == m.metadata.generation
                    && (!ready || wait::is_true(&s.conditions, conditions::READY))
            })
        })
        .await
        .with_context(|| format!("MicroService {SAMPLES_NS}/{name} did not converge"))?;
        wait::for_object(&deployments, name, CONVERGE, |_| true).await?;
    }
    println!("converged (ready: {ready}): {names:?}");
    Ok(())
}

/// A spec change after the upgrade reaches the Deployment and the MicroService is Ready for it.
async fn scale(client: &Client, name: &str, replicas: i32) -> Result<()> {
    let msvcs = Api::<MicroService>::namespaced(client.clone(), SAMPLES_NS);
    let patch = json!({ "spec": { "replicas": replicas } });
    let changed = msvcs
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), SAMPLES_NS);
    wait::for_object(&deployments, name, CONVERGE, |d| {
        d.spec.as_ref().and_then(|s| s.replicas) == Some(replicas)
    })
    .await
    .with_context(|| format!("the operator did not scale Deployment {SAMPLES_NS}/{name}"))?;
    wait::for_object(&msvcs, name, CONVERGE, |m| {
        m.status.as_ref().is_some_and(|s| {
            s.observed_generation == changed.metadata.generation
                && wait::is_true(&s.conditions, conditions::READY)
        })
    })
    .await
    .with_context(|| format!("MicroService {SAMPLES_NS}/{name} not Ready after the change"))?;
    Ok(())
}
