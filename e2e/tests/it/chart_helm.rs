//! The README's "Helm path on kubesim", as written: `kubesim up`, the CRD, `helm install` of the
//! operator chart (the operator runs as a pod under the chart's ServiceAccount and RBAC over
//! TLS) and of the samples, both MicroServices Ready, `helm test` (the chart's kubectl pod,
//! in-cluster), `helm upgrade --set replicaCount=2` (two replicas, one leader, failover of the
//! leader by deleting its pod), then `helm uninstall` of both leaves nothing behind but the CRD
//! (the Lease included). On the same cluster, before the uninstall, RBAC is proven rather than
//! assumed: with one verb removed from the chart's ClusterRole, the operator's refused write is
//! reported on the MicroService (`walkthrough_checks`).
//!
//! The only additions to the README's commands are a private state directory and address ranges
//! so parallel clusters do not collide. Needs root (kubesim mounts the ServiceAccount token at
//! its real path) and helm (`e2e/install-tools.sh`).

use std::time::Duration;

use anyhow::{bail, Result};
use flotilla_e2e::walkthrough::{HelmKubesim, Shell};
use flotilla_e2e::walkthrough_checks::{
    missing_verb_is_reported, two_replicas_one_leader_and_failover,
};
use flotilla_testkit::cluster::client_from_kubeconfig;
use flotilla_testkit::wait::poll;

const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Each helm/kubectl step on a loaded 2-core machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_helm_walkthrough_works_on_kubesim() -> Result<()> {
    let Some(cluster) = HelmKubesim::up(245, UP_TIMEOUT, STEP_TIMEOUT).await? else {
        return Ok(());
    };
    let sh = &cluster.sh;
    let result = async {
        install(sh).await?;
        let client = client_from_kubeconfig(&sh.kubeconfig).await?;
        two_replicas_one_leader_and_failover(sh, &client).await?;
        missing_verb_is_reported(sh, &client).await?;
        uninstall(sh).await
    }
    .await;
    cluster.stop("flotilla-system", result.is_err()).await;
    result
}

/// The README's install steps: CRD, operator chart, samples Ready, the operator holds the Lease,
/// `helm test` succeeds.
async fn install(sh: &Shell) -> Result<()> {
    sh.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        "crds/microservices.flotilla.rs.yaml",
    ])
    .await?;
    sh.helm(&[
        "install",
        "flotilla",
        "charts/flotilla",
        "--namespace",
        "flotilla-system",
        "--create-namespace",
        "--wait",
    ])
    .await?;
    sh.helm(&[
        "install",
        "samples",
        "charts/flotilla-samples",
        "--namespace",
        "shop",
        "--create-namespace",
    ])
    .await?;
    sh.kubectl(&[
        "-n",
        "shop",
        "wait",
        "--for=condition=Ready",
        "msvc/users",
        "msvc/auth",
        "--timeout=120s",
    ])
    .await?;
    let lease = sh
        .kubectl(&[
            "-n",
            "flotilla-system",
            "get",
            "lease",
            "flotilla-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await?;
    if !lease.starts_with("flotilla-") {
        bail!("the in-cluster operator does not hold the Lease: {lease:?}");
    }
    let test = sh
        .helm(&["test", "flotilla", "--namespace", "flotilla-system"])
        .await?;
    if !test.contains("Phase:          Succeeded") {
        bail!("helm test did not succeed:\n{test}");
    }
    Ok(())
}

/// `helm uninstall` of both releases; waits until nothing of theirs is left (the Lease
/// included) and checks that the CRD stays.
async fn uninstall(sh: &Shell) -> Result<()> {
    sh.helm(&["uninstall", "samples", "--namespace", "shop"])
        .await?;
    sh.helm(&["uninstall", "flotilla", "--namespace", "flotilla-system"])
        .await?;
    // Deletion finishes asynchronously (pods terminate with their grace period).
    poll(
        "helm uninstall to leave nothing behind",
        Duration::from_secs(90),
        || async {
            let left = sh
                .kubectl(&[
                    "get",
                    "deploy,rs,pods,svc,secret,role,rolebinding,lease,msvc",
                    "-A",
                    "-o",
                    "name",
                    "-l",
                    "app.kubernetes.io/managed-by=Helm",
                ])
                .await?
                + &sh
                    .kubectl(&["get", "pods,secrets,msvc", "-n", "shop", "-o", "name"])
                    .await?
                + &sh
                    .kubectl(&[
                        "get",
                        "deploy,pods,secrets,leases",
                        "-n",
                        "flotilla-system",
                        "-o",
                        "name",
                    ])
                    .await?;
            let cluster = sh
                .kubectl(&["get", "clusterrole,clusterrolebinding", "-o", "name"])
                .await?;
            let cluster_left: Vec<&str> =
                cluster.lines().filter(|l| l.contains("flotilla")).collect();
            if left.trim().is_empty() && cluster_left.is_empty() {
                return Ok(Some(()));
            }
            bail!("left behind:\n{left}\n{cluster_left:?}")
        },
    )
    .await?;
    sh.kubectl(&["get", "crd", "microservices.flotilla.rs"])
        .await?;
    Ok(())
}
