//! The ServiceAccount projection every pod gets, as the kubelet's `kube-api-access-*` projected
//! volume provides it: a token for the pod's ServiceAccount from the TokenRequest API (bound to
//! the pod, so it dies with it), the cluster CA from the namespace's `kube-root-ca.crt`
//! ConfigMap, and the namespace, as files in `<pod dir>/serviceaccount/`, mounted at
//! [`MOUNT_PATH`] in every container. The token is refreshed at 80% of its lifetime, as the
//! kubelet does. `automountServiceAccountToken: false` (on the pod, else on the ServiceAccount)
//! turns it off.
//!
//! kubesim does not add the volume to the pod spec (a real API server's admission does); the
//! kubelet projects it directly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

/// Where containers find the token, `ca.crt` and `namespace`.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The lifetime the kubelet asks for (an hour plus seven seconds, as upstream).
const EXPIRATION_SECONDS: i64 = 3607;

/// Whether the pod gets the projection: the pod's setting wins over its ServiceAccount's.
pub fn automount(pod: &Pod, sa: Option<&ServiceAccount>) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.automount_service_account_token)
        .or_else(|| sa.and_then(|s| s.automount_service_account_token))
        .unwrap_or(true)
}

fn service_account_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| format!("writing {name}: {e}"))
}

/// Requests a fresh token and writes the files. Returns the directory and the token's lifetime.
async fn refresh(client: &kube::Client, pod: &Pod, dir: &Path) -> Result<Duration, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = service_account_name(pod);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(EXPIRATION_SECONDS),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let issued = api
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("requesting a token for serviceaccount {sa:?}: {e}"))?;
    let token = issued.status.map(|s| s.token).unwrap_or_default();
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    write_atomically(dir, "token", &token)?;
    write_atomically(dir, "namespace", &ns)?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    if let Some(ca) = cms
        .get_opt("kube-root-ca.crt")
        .await
        .map_err(|e| e.to_string())?
        .and_then(|cm| cm.data?.get("ca.crt").cloned())
    {
        write_atomically(dir, "ca.crt", &ca)?;
    }
    Ok(Duration::from_secs(EXPIRATION_SECONDS.unsigned_abs()))
}

/// Projects the ServiceAccount files for `pod` into `<pod_dir>/serviceaccount` unless automount
/// is off; then keeps the token fresh until `token` is cancelled. `Ok(None)`: nothing to mount.
pub async fn project(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
    token: &CancellationToken,
) -> Result<Option<PathBuf>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa_name = service_account_name(pod);
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa = api.get_opt(&sa_name).await.map_err(|e| e.to_string())?;
    if !automount(pod, sa.as_ref()) {
        return Ok(None);
    }
    if sa.is_none() {
        return Err(format!("serviceaccount \"{sa_name}\" not found"));
    }
    let dir = pod_dir.join("serviceaccount");
    let lifetime = refresh(client, pod, &dir).await?;
    let (client, pod, rotate_dir, token) =
        (client.clone(), pod.clone(), dir.clone(), token.clone());
    tokio::spawn(async move {
        let mut every = lifetime.mul_f64(0.8);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            every = match refresh(&client, &pod, &rotate_dir).await {
                Ok(l) => l.mul_f64(0.8),
                // Retry soon; the old token stays valid until it expires.
                Err(e) => {
                    tracing::debug!(error = %e, "token refresh failed");
                    Duration::from_secs(10)
                }
            };
        }
    });
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_setting_wins_over_the_service_account() {
        // automountServiceAccountToken on the pod overrides the ServiceAccount's; unset on both
        // means mount.
        let pod = |v: Option<bool>| -> Pod {
            serde_json::from_value(
                serde_json::json!({"spec": {"containers": [], "automountServiceAccountToken": v}}),
            )
            .expect("pod")
        };
        let sa = |v: Option<bool>| -> ServiceAccount {
            serde_json::from_value(serde_json::json!({"automountServiceAccountToken": v}))
                .expect("sa")
        };
        assert!(automount(&pod(None), None));
        assert!(!automount(&pod(None), Some(&sa(Some(false)))));
        assert!(automount(&pod(Some(true)), Some(&sa(Some(false)))));
        assert!(!automount(&pod(Some(false)), Some(&sa(None))));
    }
}
