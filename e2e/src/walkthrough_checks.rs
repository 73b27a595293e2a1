//! Checks run on a cluster where the README's Helm walkthrough installed the operator in-cluster
//! (see `tests/it/chart_helm.rs`): two replicas with one leader and a failover, and a verb missing
//! from the chart's ClusterRole reported on the MicroService. Each talks to the cluster as its
//! user would: helm and kubectl for installing, the API for reading, and each operator pod's own
//! `/metrics` for what it wrote.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use flotilla_crds::{conditions, reasons, MicroService};
use flotilla_testkit::{http, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};

use crate::chart;
use crate::walkthrough::Shell;

/// Namespace and release of the operator in the README walkthrough.
pub const OPERATOR_NS: &str = "flotilla-system";
/// The operator's release name in the README walkthrough.
pub const RELEASE: &str = "flotilla";
/// The leader-election Lease the chart creates.
pub const LEASE: &str = "flotilla-operator";
/// The operator chart's lease duration (`LeaseTiming::default`): a standby must take over within
/// it after the leader is gone.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// Deadline for a cluster change to be reflected, on a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(90);

/// The operator pods of the release that run and are Ready.
async fn ready_operator_pods(client: &Client) -> Result<Vec<Pod>> {
    Ok(operator_pods(client)
        .await?
        .into_iter()
        .filter(|p| {
            let conds = p.status.as_ref().and_then(|s| s.conditions.as_ref());
            conds.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect())
}

/// The operator pods of the release that are not terminating.
async fn operator_pods(client: &Client) -> Result<Vec<Pod>> {
    let selector =
        format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator");
    let pods = Api::<Pod>::namespaced(client.clone(), OPERATOR_NS)
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// The pod holding the Lease ("" when free). A replica's identity is its pod name, `_`, and a
/// random suffix (as client-go's leader election names them).
async fn lease_holder(client: &Client) -> Result<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), OPERATOR_NS)
        .get(LEASE)
        .await?;
    let identity = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    Ok(identity
        .rsplit_once('_')
        .map_or(identity.as_str(), |(pod, _)| pod)
        .to_owned())
}

/// Sum over all series of the metric `name` on the operator pod's `/metrics` (0 when absent).
async fn pod_metric(pod: &Pod, name: &str) -> Result<f64> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .with_context(|| format!("pod {} has no IP", pod.name_any()))?;
    let reply = http::get(&format!("http://{ip}:8080/metrics")).await?;
    ensure!(
        reply.status == 200,
        "/metrics of {}: {}",
        pod.name_any(),
        reply.status
    );
    Ok(sum_metric(&reply.body, name))
}

/// Sum of the samples of `name` (with or without labels) in a Prometheus text exposition.
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .fold(0.0, |sum, v| sum + v)
}

/// Each operator pod's name with its `flotilla_leader` and `flotilla_child_writes_total` (write
/// attempts of any outcome: a standby makes none).
async fn leader_and_writes(pods: &[Pod]) -> Result<Vec<(String, f64, f64)>> {
    let mut out = Vec::new();
    for pod in pods {
        out.push((
            pod.name_any(),
            pod_metric(pod, "flotilla_leader").await?,
            pod_metric(pod, "flotilla_child_writes_total").await?,
        ));
    }
    Ok(out)
}

/// Changes the replicas of the sample MicroService `shop/auth` and waits until its Deployment
/// has them and the MicroService is Ready for that generation: the operator reconciles.
async fn converge_auth_replicas(client: &Client, replicas: i32) -> Result<()> {
    let msvcs = Api::<MicroService>::namespaced(client.clone(), "shop");
    let patch = json!({ "spec": { "replicas": replicas } });
    let changed = msvcs
        .patch("auth", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let generation = changed.metadata.generation;
    let deployments = Api::<Deployment>::namespaced(client.clone(), "shop");
    wait::for_object(&deployments, "auth", CONVERGE, |d| {
        d.spec.as_ref().and_then(|s| s.replicas) == Some(replicas)
    })
    .await
    .context("the operator did not apply the new replicas to Deployment shop/auth")?;
    wait::for_object(&msvcs, "auth", CONVERGE, |m| {
        m.status.as_ref().is_some_and(|s| {
            s.observed_generation == generation && wait::is_true(&s.conditions, conditions::READY)
        })
    })
    .await
    .context("MicroService shop/auth did not become Ready for its new generation")?;
    Ok(())
}

/// `helm upgrade --set replicaCount=2`: two Ready operator pods, exactly one leading (it holds
/// the Lease, reports `flotilla_leader 1`, and is the only one that writes children when a spec
/// changes); deleting the leader's pod hands the Lease to another replica within the lease
/// duration, and a spec change after the takeover converges, written by the new leader alone.
/// Returns the takeover time.
pub async fn two_replicas_one_leader_and_failover(sh: &Shell, client: &Client) -> Result<Duration> {
    sh.helm(&[
        "upgrade",
        RELEASE,
        "charts/flotilla",
        "--namespace",
        OPERATOR_NS,
        "--reuse-values",
        "--set",
        "replicaCount=2",
        "--wait",
    ])
    .await?;
    let pods = wait::poll("two Ready operator pods", CONVERGE, || async {
        let pods = ready_operator_pods(client).await?;
        Ok((pods.len() == 2).then_some(pods))
    })
    .await?;
    let names: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
    let holder = lease_holder(client).await?;
    ensure!(
        names.contains(&holder),
        "Lease holder {holder:?} is not one of {names:?}"
    );

    converge_auth_replicas(client, 1).await?;
    let seen = leader_and_writes(&pods).await?;
    println!("operator replicas (pod, flotilla_leader, child writes): {seen:?}");
    for (pod, leading, writes) in &seen {
        let is_holder = *pod == holder;
        ensure!(
            (*leading == 1.0) == is_holder,
            "pod {pod} reports flotilla_leader {leading}, Lease holder is {holder}"
        );
        ensure!(
            is_holder == (*writes > 0.0),
            "pod {pod} wrote {writes} children; only the leader {holder} may write"
        );
    }

    // The standby, or the pod the ReplicaSet starts in the leader's place, whichever asks
    // first once the leader releases the Lease on SIGTERM (on a real cluster too).
    let deleted = Instant::now();
    sh.kubectl(&["-n", OPERATOR_NS, "delete", "pod", &holder, "--wait=false"])
        .await?;
    let (successor, taken) = wait::poll(
        "another replica to take the Lease",
        LEASE_DURATION * 3,
        || async {
            let now = lease_holder(client).await?;
            Ok((!now.is_empty() && now != holder).then(|| (now, Instant::now())))
        },
    )
    .await?;
    let takeover = taken.duration_since(deleted);
    println!("{successor} took the Lease {takeover:?} after the leader's pod was deleted");
    ensure!(
        takeover <= LEASE_DURATION,
        "takeover took {takeover:?}, more than the lease duration {LEASE_DURATION:?}"
    );
    converge_auth_replicas(client, 2).await?;
    // The successor may be the new pod, which serves /metrics before its readiness probe
    // passes: every live pod with an IP is asked.
    let seen = wait::poll("the new leader's /metrics", CONVERGE, || async {
        let pods = operator_pods(client).await?;
        let running: Vec<Pod> = pods
            .into_iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()))
            .collect();
        if !running.iter().any(|p| p.name_any() == successor) {
            return Ok(None);
        }
        Ok(leader_and_writes(&running).await.ok())
    })
    .await?;
    println!("after the takeover (pod, flotilla_leader, child writes): {seen:?}");
    ensure!(
        seen.iter()
            .any(|(pod, leading, writes)| *pod == successor && *leading == 1.0 && *writes > 0.0),
        "the new leader {successor} does not lead or wrote nothing: {seen:?}"
    );
    ensure!(
        seen.iter()
            .all(|(pod, leading, _)| *pod == successor || *leading == 0.0),
        "more than one replica leads: {seen:?}"
    );
    Ok(takeover)
}

/// The chart's ClusterRole, as `helm template` renders it for the walkthrough's release.
fn rendered_cluster_role() -> Result<Value> {
    let docs = chart::render_docs("flotilla", RELEASE, OPERATOR_NS, &[])?;
    Ok(chart::find_kind(&docs, "ClusterRole")?.clone())
}

/// `role` without `verb` on `resource` (of the core group): the rule that lists it is split so
/// that every other resource keeps its verbs.
pub fn without_verb(role: &Value, resource: &str, verb: &str) -> Result<Value> {
    let mut role = role.clone();
    let rules = role
        .get_mut("rules")
        .and_then(Value::as_array_mut)
        .context("ClusterRole has no rules")?;
    let at = rules
        .iter()
        .position(|r| {
            r["apiGroups"] == json!([""])
                && r["resources"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == resource))
        })
        .with_context(|| format!("no rule for {resource}"))?;
    let rule = rules.remove(at);
    let others: Vec<Value> = rule["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| *x != resource)
        .cloned()
        .collect();
    if !others.is_empty() {
        let mut kept = rule.clone();
        kept["resources"] = json!(others);
        rules.push(kept);
    }
    let verbs: Vec<Value> = rule["verbs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| *v != verb)
        .cloned()
        .collect();
    ensure!(
        verbs.len() + 1 == rule["verbs"].as_array().map_or(0, Vec::len),
        "the chart does not grant {verb} on {resource}"
    );
    rules.push(json!({ "apiGroups": [""], "resources": [resource], "verbs": verbs }));
    Ok(role)
}

/// Applies `role` over the chart's ClusterRole with `kubectl apply --server-side`.
async fn apply_role(sh: &Shell, role: &Value) -> Result<()> {
    let file = sh.home.join("clusterrole.json");
    std::fs::write(&file, serde_json::to_vec_pretty(role)?)?;
    let path = file.to_string_lossy().into_owned();
    sh.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &path])
        .await?;
    Ok(())
}

/// The chart's ClusterRole without `patch` on Services: a new MicroService gets its Deployment
/// but its Service write is refused (403), and the MicroService says so: `Degraded` with reason
/// `Forbidden`, and a Warning Event, both naming the verb and resource. The chart's role is
/// restored afterwards and the MicroService deleted.
pub async fn missing_verb_is_reported(sh: &Shell, client: &Client) -> Result<()> {
    let role = rendered_cluster_role()?;
    apply_role(sh, &without_verb(&role, "services", "patch")?).await?;
    let result = async {
        let msvcs = Api::<MicroService>::namespaced(client.clone(), "shop");
        let probe: MicroService = serde_json::from_value(json!({
            "apiVersion": "flotilla.rs/v1alpha1",
            "kind": "MicroService",
            "metadata": { "name": "rbac-probe", "namespace": "shop" },
            "spec": { "image": "flotilla/users:0.1.0", "replicas": 1, "port": 8080 },
        }))?;
        msvcs.create(&PostParams::default(), &probe).await?;
        let refused = "cannot patch resource \"services\"";
        let degraded = wait::for_object(&msvcs, "rbac-probe", CONVERGE, |m| {
            let conds = m
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            wait::condition(conds, conditions::DEGRADED).is_some_and(|c| {
                c.status == "True" && c.reason == reasons::FORBIDDEN && c.message.contains(refused)
            })
        })
        .await
        .context("the MicroService does not report the refused write")?;
        let message = wait::condition(
            degraded
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default(),
            conditions::DEGRADED,
        )
        .map(|c| c.message.clone())
        .unwrap_or_default();
        println!("Degraded/Forbidden: {message}");
        let events = Api::<Event>::namespaced(client.clone(), "shop");
        wait::poll("a Forbidden Event about rbac-probe", CONVERGE, || async {
            let found = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("rbac-probe")
                        && e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some(reasons::FORBIDDEN)
                        && e.note.as_deref().is_some_and(|n| n.contains(refused))
                });
            Ok(found.then_some(()))
        })
        .await?;
        anyhow::Ok(())
    }
    .await;
    apply_role(sh, &role).await?;
    let msvcs = Api::<MicroService>::namespaced(client.clone(), "shop");
    match msvcs.delete("rbac-probe", &DeleteParams::default()).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => bail!("deleting rbac-probe: {e}"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removing one verb on one resource leaves every other grant of its rule in place.
    #[test]
    fn without_verb_splits_the_rule() {
        let role = json!({ "rules": [
            { "apiGroups": [""], "resources": ["services", "configmaps"], "verbs": ["get", "patch"] },
        ]});
        let cut = without_verb(&role, "services", "patch").expect("cut");
        assert_eq!(
            cut["rules"],
            json!([
                { "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"] },
                { "apiGroups": [""], "resources": ["services"], "verbs": ["get"] },
            ])
        );
        assert!(without_verb(&role, "services", "delete").is_err());
    }

    /// Samples are summed over label sets; a metric whose name merely starts alike is not.
    #[test]
    fn sums_a_metric() {
        let text =
            "# HELP x\nflotilla_leader 1\nflotilla_leader_x 5\nw{kind=\"a\"} 2\nw{kind=\"b\"} 3\n";
        assert_eq!(sum_metric(text, "flotilla_leader"), 1.0);
        assert_eq!(sum_metric(text, "w"), 5.0);
        assert_eq!(sum_metric(text, "absent"), 0.0);
    }
}
