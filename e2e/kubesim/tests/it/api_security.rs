//! A secure kubesim as a real API server is secure: HTTPS with its own CA, 401 without a valid
//! credential, RBAC with the real 403 messages, ServiceAccount tokens from the TokenRequest API
//! that die with their pod or ServiceAccount, and `kubectl auth can-i` (with `--as`) answering
//! through SelfSubjectAccessReview — checked with kube-rs and the real kubectl.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Api;
use kubesim::{Cluster, ClusterConfig};
use serde_json::json;

async fn secure() -> Result<Cluster> {
    crate::support::start_with(ClusterConfig {
        secure: true,
        ..ClusterConfig::default()
    })
    .await
}

/// A client for `cluster` that trusts its CA and sends `token` (or no credential at all).
async fn client_with(cluster: &Cluster, token: Option<&str>) -> Result<kube::Client> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(cluster.ca_pem().context("no CA")?);
    let user = match token {
        Some(t) => format!("{{token: {t}}}"),
        None => "{}".to_string(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user: {user}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u, namespace: default}}\ncurrent-context: x\n",
        cluster.url()
    );
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&text)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

fn status_of<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Result<(u16, String)> {
    let status = crate::support::api_error(r)?;
    Ok((status.code, status.message))
}

async fn token_for(cluster: &Cluster, ns: &str, sa: &str, pod: Option<&Pod>) -> Result<String> {
    let mut spec = json!({"expirationSeconds": 3600});
    if let Some(p) = pod {
        spec["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1",
            "name": p.metadata.name, "uid": p.metadata.uid});
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&body)?)?;
    let out: serde_json::Value = cluster.client().request(req).await?;
    out.pointer("/status/token")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .context("TokenRequest returned no token")
}

async fn service_account(cluster: &Cluster, ns: &str, name: &str) -> Result<()> {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<ServiceAccount>::namespaced(cluster.client(), ns)
        .create(&PostParams::default(), &sa)
        .await?;
    Ok(())
}

/// Grants `sa` get/list on pods in `ns`.
async fn pod_reader(cluster: &Cluster, ns: &str, sa: &str) -> Result<()> {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    }))?;
    Api::<Role>::namespaced(cluster.client(), ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": sa}],
    }))?;
    Api::<RoleBinding>::namespaced(cluster.client(), ns)
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

#[tokio::test]
async fn requests_without_a_valid_credential_get_401_with_a_status_body() -> Result<()> {
    let cluster = secure().await?;
    assert!(cluster.url().starts_with("https://"));
    let anonymous = client_with(&cluster, None).await?;
    let r = Api::<Pod>::namespaced(anonymous, "default")
        .list(&ListParams::default())
        .await;
    assert_eq!(status_of(r)?, (401, "Unauthorized".to_string()));
    let forged = client_with(&cluster, Some("not-a-token")).await?;
    let r = Api::<Pod>::namespaced(forged, "default")
        .list(&ListParams::default())
        .await;
    assert_eq!(status_of(r)?.0, 401);
    // The admin token and the kubeconfig's client certificate both authenticate.
    let admin = client_with(&cluster, Some(cluster.admin_token())).await?;
    Api::<Pod>::namespaced(admin, "default")
        .list(&ListParams::default())
        .await?;
    Api::<Pod>::namespaced(cluster.client(), "default")
        .list(&ListParams::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn rbac_grants_what_a_role_says_and_refuses_the_rest_as_the_real_server_does() -> Result<()> {
    let cluster = secure().await?;
    service_account(&cluster, "default", "reader").await?;
    pod_reader(&cluster, "default", "reader").await?;
    let token = token_for(&cluster, "default", "reader", None).await?;
    let reader = client_with(&cluster, Some(&token)).await?;
    Api::<Pod>::namespaced(reader.clone(), "default")
        .list(&ListParams::default())
        .await?;
    let r = Api::<Pod>::namespaced(reader.clone(), "kube-system")
        .list(&ListParams::default())
        .await;
    assert_eq!(
        status_of(r)?,
        (403, r#"pods is forbidden: User "system:serviceaccount:default:reader" cannot list resource "pods" in API group "" in the namespace "kube-system""#.to_string())
    );
    let r = Api::<Deployment>::namespaced(reader.clone(), "default")
        .patch(
            "web",
            &PatchParams::apply("t"),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment"})),
        )
        .await;
    assert_eq!(
        status_of(r)?,
        (403, r#"deployments.apps "web" is forbidden: User "system:serviceaccount:default:reader" cannot patch resource "deployments" in API group "apps" in the namespace "default""#.to_string())
    );
    // Discovery is open to every authenticated user.
    reader.apiserver_version().await?;
    // The default `view` ClusterRole, bound in a namespace, grants reads there (aggregated rules).
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "default"}],
    }))?;
    Api::<RoleBinding>::namespaced(cluster.client(), "kube-system")
        .create(&PostParams::default(), &binding)
        .await?;
    Api::<Pod>::namespaced(reader.clone(), "kube-system")
        .list(&ListParams::default())
        .await?;
    Api::<Deployment>::namespaced(reader, "kube-system")
        .list(&ListParams::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn service_account_tokens_die_with_their_pod_and_their_service_account() -> Result<()> {
    let cluster = secure().await?;
    service_account(&cluster, "default", "app").await?;
    pod_reader(&cluster, "default", "app").await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "kubesim/testpod:1"}]},
    }))?;
    let pods = Api::<Pod>::namespaced(cluster.client(), "default");
    let pod = pods.create(&PostParams::default(), &pod).await?;
    let bound = token_for(&cluster, "default", "app", Some(&pod)).await?;
    let unbound = token_for(&cluster, "default", "app", None).await?;
    let as_pod = client_with(&cluster, Some(&bound)).await?;
    Api::<Pod>::namespaced(as_pod.clone(), "default")
        .get("app")
        .await?;

    pods.delete("app", &DeleteParams::default().grace_period(0))
        .await?;
    flotilla_testkit::wait::for_deletion(&pods, "app", Duration::from_secs(30)).await?;
    let r = Api::<Pod>::namespaced(as_pod, "default")
        .list(&ListParams::default())
        .await;
    assert_eq!(
        status_of(r)?.0,
        401,
        "a token bound to a deleted pod is revoked"
    );

    let as_sa = client_with(&cluster, Some(&unbound)).await?;
    Api::<Pod>::namespaced(as_sa.clone(), "default")
        .list(&ListParams::default())
        .await?;
    Api::<ServiceAccount>::namespaced(cluster.client(), "default")
        .delete("app", &DeleteParams::default())
        .await?;
    let r = Api::<Pod>::namespaced(as_sa, "default")
        .list(&ListParams::default())
        .await;
    assert_eq!(
        status_of(r)?.0,
        401,
        "a token of a deleted ServiceAccount is revoked"
    );
    Ok(())
}

async fn kubectl(
    bin: &Path,
    kubeconfig: &Path,
    home: &Path,
    args: &[&str],
) -> Result<(bool, String)> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env("KUBECACHEDIR", home.join("cache"))
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The kubectl binaries to check: the one on PATH (1.32) and, when `e2e/install-tools.sh`
/// has extracted it, the 1.35 one next to helm.
fn kubectl_binaries() -> Vec<std::path::PathBuf> {
    let mut bins = vec![std::path::PathBuf::from("kubectl")];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let v135 = root.join(".tools/bin/kubectl-1.35");
    if v135.is_file() {
        bins.push(v135);
    }
    bins
}

#[tokio::test]
async fn kubectl_speaks_tls_and_auth_can_i_answers_with_impersonation() -> Result<()> {
    let cluster = secure().await?;
    service_account(&cluster, "default", "reader").await?;
    pod_reader(&cluster, "default", "reader").await?;
    let home = tempfile::tempdir()?;
    let sa = "system:serviceaccount:default:reader";
    for bin in kubectl_binaries() {
        let (ok, out) = kubectl(
            &bin,
            cluster.kubeconfig_path(),
            home.path(),
            &["get", "namespaces", "-o", "name"],
        )
        .await?;
        if !ok || !out.contains("namespace/kube-system") {
            bail!(
                "{}: kubectl get namespaces over TLS failed: {out}",
                bin.display()
            );
        }
        let cases: [(&[&str], &str); 5] = [
            (&["auth", "can-i", "delete", "deployments.apps"], "yes"),
            (&["auth", "can-i", "list", "pods", "--as", sa], "yes"),
            (
                &[
                    "auth",
                    "can-i",
                    "list",
                    "pods",
                    "-n",
                    "kube-system",
                    "--as",
                    sa,
                ],
                "no",
            ),
            (&["auth", "can-i", "delete", "pods", "--as", sa], "no"),
            (
                &[
                    "auth",
                    "can-i",
                    "get",
                    "pods",
                    "--subresource=log",
                    "--as",
                    sa,
                ],
                "no",
            ),
        ];
        for (args, want) in cases {
            let (_, out) = kubectl(&bin, cluster.kubeconfig_path(), home.path(), args).await?;
            assert_eq!(
                out.lines().next().unwrap_or(""),
                want,
                "{} {args:?}: {out}",
                bin.display()
            );
        }
        let (ok, out) = kubectl(
            &bin,
            cluster.kubeconfig_path(),
            home.path(),
            &["delete", "pod", "x", "--as", sa],
        )
        .await?;
        assert!(!ok && out.contains(r#"pods "x" is forbidden: User "system:serviceaccount:default:reader" cannot delete resource "pods""#), "{out}");
    }
    Ok(())
}
