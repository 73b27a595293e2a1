//! The operator of the local e2e suite runs with exactly the permissions the operator chart
//! grants, so the suite proves the operator never needs more.
//!
//! On a local cluster, [`launcher`] installs the chart's ServiceAccount, ClusterRole and
//! ClusterRoleBinding (rendered by `helm template` for the release `flotilla` in
//! `flotilla-system`, as the README installs it) and starts the `flotilla-operator` binary with a
//! kubeconfig that impersonates that ServiceAccount (`as:` in the kubeconfig user, which the API
//! server authorises like the pod's own token). Every refused request (403) shows in the
//! operator's log with the server's `... is forbidden: User "system:serviceaccount:..."`
//! message; [`check_no_forbidden_requests`] fails the test on any, including refusals the
//! operator only logs (an Event it could not publish).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use flotilla_testkit::cluster::FIELD_MANAGER;
use flotilla_testkit::operator::{Launcher, OperatorProcess, RunningOperator, Target};
use flotilla_testkit::Harness;

use crate::chart;

/// The operator's namespace and release, as the README installs the chart.
pub const NAMESPACE: &str = "flotilla-system";
/// The release name of the operator chart.
pub const RELEASE: &str = "flotilla";
/// The user the chart's ServiceAccount authenticates as.
pub const USER: &str = "system:serviceaccount:flotilla-system:flotilla";
/// File name of the operator's log in the cluster's state directory (as the testkit's launcher).
const LOG: &str = "operator.log";

/// The chart's ServiceAccount, ClusterRole and ClusterRoleBinding (not `helm test`'s), rendered
/// once per process.
fn rendered() -> Result<&'static [Value]> {
    static DOCS: OnceLock<Vec<Value>> = OnceLock::new();
    if let Some(docs) = DOCS.get() {
        return Ok(docs);
    }
    let docs: Vec<Value> = chart::render_docs("flotilla", RELEASE, NAMESPACE, &[])?
        .into_iter()
        .filter(|d| d.pointer("/metadata/annotations/helm.sh~1hook").is_none())
        .filter(|d| {
            matches!(
                chart::kind_of(d),
                "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding"
            )
        })
        .collect();
    ensure!(
        docs.len() == 3,
        "the chart rendered {} RBAC objects",
        docs.len()
    );
    Ok(DOCS.get_or_init(|| docs))
}

/// Server-side applies `doc` as a `K` through `api`.
async fn apply<K>(api: Api<K>, doc: &Value) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(doc.clone())?;
    let name = chart::name_of(doc);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("applying the chart's {} {name}", chart::kind_of(doc)))?;
    Ok(())
}

/// Installs the chart's namespace, ServiceAccount and cluster-wide RBAC into the cluster.
pub async fn install(client: &Client) -> Result<()> {
    let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NAMESPACE } });
    apply(Api::<Namespace>::all(client.clone()), &ns).await?;
    for doc in rendered()? {
        match chart::kind_of(doc) {
            "ServiceAccount" => {
                apply(
                    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE),
                    doc,
                )
                .await?
            }
            "ClusterRole" => apply(Api::<ClusterRole>::all(client.clone()), doc).await?,
            _ => apply(Api::<ClusterRoleBinding>::all(client.clone()), doc).await?,
        }
    }
    Ok(())
}

/// Writes to `to` the kubeconfig `from` with every user impersonating `user`.
pub fn impersonating_kubeconfig(from: &Path, to: &Path, user: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut config: Value = serde_norway::from_str(&text)?;
    let users = config
        .get_mut("users")
        .and_then(Value::as_array_mut)
        .context("the kubeconfig has no users")?;
    for entry in users {
        entry["user"]["as"] = json!(user);
    }
    std::fs::write(to, serde_norway::to_string(&config)?)
        .with_context(|| format!("writing {}", to.display()))
}

/// Whether the client may `verb` `resource` (core group) in the namespace `default`, by a
/// `SelfSubjectAccessReview`.
async fn can_i(client: &Client, verb: &str, resource: &str) -> Result<bool> {
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": { "resourceAttributes": {
            "verb": verb, "resource": resource, "namespace": "default"
        }}
    }))?;
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Checks that the kubeconfig acts as the chart's ServiceAccount: it may patch Services (the
/// chart grants it) but not read Secrets (the chart does not), so the operator cannot be
/// running as the admin by mistake.
async fn check_identity(kubeconfig: &Path) -> Result<()> {
    let client = flotilla_testkit::cluster::client_from_kubeconfig(kubeconfig).await?;
    ensure!(
        can_i(&client, "patch", "services").await? && !can_i(&client, "get", "secrets").await?,
        "the operator's kubeconfig does not act as {USER} with the chart's RBAC"
    );
    Ok(())
}

/// Starts the operator binary for all namespaces, without leader election (as the testkit's own
/// launcher), as the chart's ServiceAccount after installing the chart's RBAC.
pub fn launcher() -> Launcher {
    launch(None)
}

/// [`launcher`], with the operator's metrics on `metrics_addr` at every start (for a Prometheus
/// scraping it).
pub fn launcher_at(metrics_addr: &str) -> Launcher {
    launch(Some(metrics_addr.to_owned()))
}

/// The launcher: the metrics on `metrics_addr`, or on a fresh port at each start.
fn launch(metrics_addr: Option<String>) -> Launcher {
    Arc::new(move |target: Target<'_>| {
        let metrics_addr = metrics_addr.clone();
        Box::pin(async move {
            install(&target.client).await?;
            let kubeconfig = target.state_dir.join("operator-kubeconfig.yaml");
            impersonating_kubeconfig(target.kubeconfig, &kubeconfig, USER)?;
            check_identity(&kubeconfig).await?;
            let log = target.state_dir.join(LOG);
            let operator = match metrics_addr {
                Some(addr) => {
                    OperatorProcess::start_for_all_namespaces_at(&kubeconfig, log, &addr).await?
                }
                None => OperatorProcess::start_for_all_namespaces(&kubeconfig, log).await?,
            };
            Ok(Box::new(operator) as Box<dyn RunningOperator>)
        })
    })
}

/// The lines of an operator log that report a request refused to the chart's ServiceAccount.
pub fn forbidden_lines(log: &str) -> Vec<&str> {
    let needle = format!("is forbidden: User \\\"{USER}\\\"");
    let plain = format!("is forbidden: User \"{USER}\"");
    log.lines()
        .filter(|l| l.contains(&needle) || l.contains(&plain))
        .collect()
}

/// Fails when the local operator's log shows a request the chart's RBAC refused. Nothing to
/// check on an external cluster (the chart's own operator runs there; see `e2e/kind`).
pub fn check_no_forbidden_requests(h: &Harness) -> Result<()> {
    let Some(local) = h.local() else {
        return Ok(());
    };
    let path = local.state_dir().join(LOG);
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let refused = forbidden_lines(&log);
    ensure!(
        refused.is_empty(),
        "the operator needed more than the chart's ClusterRole grants:\n{}",
        refused.join("\n")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only refusals of the chart's ServiceAccount count, however the log quotes them.
    #[test]
    fn finds_refusals_of_the_service_account() {
        let log = format!(
            "ok line\n\
             WARN apply failed: services \"x\" is forbidden: User \"{USER}\" cannot patch resource\n\
             {{\"error\":\"pods \\\"p\\\" is forbidden: User \\\"{USER}\\\" cannot patch\"}}\n\
             users \"bob\" is forbidden: User \"system:anonymous\" cannot get\n"
        );
        assert_eq!(forbidden_lines(&log).len(), 2, "{log}");
    }

    /// The impersonating kubeconfig keeps everything else of the original.
    #[test]
    fn kubeconfig_impersonates() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(
            &from,
            "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n    token: t\n",
        )?;
        impersonating_kubeconfig(&from, &to, USER)?;
        let out: Value = serde_norway::from_str(&std::fs::read_to_string(&to)?)?;
        assert_eq!(out["users"][0]["user"]["as"], json!(USER));
        assert_eq!(out["users"][0]["user"]["token"], json!("t"));
        Ok(())
    }
}
