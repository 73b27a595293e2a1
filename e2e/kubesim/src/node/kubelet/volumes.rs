//! Pod volumes on local disk: ConfigMap and Secret volumes are written as files under
//! `<pod dir>/volumes/<volume>/`, emptyDir and PVCs become empty directories there, hostPath points
//! at the host path itself. Processes learn the directory through `KUBESIM_VOLUME_<NAME>` and
//! through mount-path rewriting of env values and arguments (see `env`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret};
use kube::Api;

/// Files to write for one volume: relative path → bytes.
fn files(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    match items {
        None => Ok(data.into_iter().collect()),
        Some(items) => items
            .iter()
            .map(|i| {
                data.get(&i.key)
                    .map(|v| (i.path.clone(), v.clone()))
                    .ok_or_else(|| format!("key {} not found", i.key))
            })
            .collect(),
    }
}

fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for (rel, bytes) in files {
        if rel.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(format!("invalid volume path {rel}"));
        }
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes every volume of the pod; returns volume name → directory, or a `FailedMount` message.
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = pod_dir.join("volumes").join(&vol.name);
        if let Some(src) = &vol.config_map {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let data = match api.get_opt(&src.name).await.map_err(|e| e.to_string())? {
                Some(cm) => {
                    let mut d: BTreeMap<String, Vec<u8>> = cm
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    d.extend(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    d
                }
                None if src.optional == Some(true) => BTreeMap::new(),
                None => return Err(format!("configmap \"{}\" not found", src.name)),
            };
            write_files(&dir, &files(data, src.items.as_ref())?)?;
        } else if let Some(src) = &vol.secret {
            let name = src.secret_name.clone().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let data = match api.get_opt(&name).await.map_err(|e| e.to_string())? {
                Some(s) => s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
                None if src.optional == Some(true) => BTreeMap::new(),
                None => return Err(format!("secret \"{name}\" not found")),
            };
            write_files(&dir, &files(data, src.items.as_ref())?)?;
        } else if let Some(hp) = &vol.host_path {
            out.insert(vol.name.clone(), PathBuf::from(&hp.path));
            continue;
        } else {
            // emptyDir, persistentVolumeClaim and anything else: an empty directory.
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        }
        out.insert(vol.name.clone(), dir);
    }
    Ok(out)
}

/// `(mountPath, directory)` for a container's mounts, honouring `subPath`.
pub fn mounts(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Vec<(String, PathBuf)> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let dir = volumes.get(&m.name)?;
            let dir = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => dir.join(sub),
                None => dir.clone(),
            };
            Some((m.mount_path.clone(), dir))
        })
        .collect()
}
