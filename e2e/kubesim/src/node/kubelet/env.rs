//! A container's environment, resolved the way the kubelet resolves it, plus kubesim's own rules:
//! `LISTEN_ADDR=<podIP>:<first containerPort>`, mount paths rewritten to the pod's volume
//! directories, and Service DNS names rewritten to cluster IPs (there is no cluster DNS).
//! Pure: every object it needs is passed in; no client here.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use regex::Regex;

/// Port assumed for `LISTEN_ADDR` when a container declares none.
pub const DEFAULT_PORT: i32 = 8080;

/// Why a container's environment cannot be built (the kubelet's `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in {kind} {name}")]
    KeyNotFound {
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("unsupported fieldRef {0}")]
    UnsupportedField(String),
    #[error("resourceFieldRef {0} has no value in the container's resources")]
    UnsetResource(String),
}

/// Everything the resolution reads besides the container itself.
#[derive(Debug)]
pub struct EnvInputs<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub node_name: &'a str,
    /// ConfigMaps and Secrets of the pod's namespace, by name.
    pub config_maps: &'a BTreeMap<String, ConfigMap>,
    pub secrets: &'a BTreeMap<String, Secret>,
    /// All Services (any namespace), for DNS rewriting and service links.
    pub services: &'a [Service],
    /// `(mountPath, directory)` of the container's volume mounts.
    pub mounts: &'a [(String, PathBuf)],
}

fn config_map_value(
    inp: &EnvInputs,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, EnvError> {
    let Some(cm) = inp.config_maps.get(name) else {
        return if optional {
            Ok(None)
        } else {
            Err(EnvError::ConfigMapNotFound(name.into()))
        };
    };
    let value = cm
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
        .or_else(|| {
            cm.binary_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        });
    match value {
        Some(v) => Ok(Some(v)),
        None if optional => Ok(None),
        None => Err(EnvError::KeyNotFound {
            kind: "configmap",
            name: name.into(),
            key: key.into(),
        }),
    }
}

fn secret_value(
    inp: &EnvInputs,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, EnvError> {
    let Some(secret) = inp.secrets.get(name) else {
        return if optional {
            Ok(None)
        } else {
            Err(EnvError::SecretNotFound(name.into()))
        };
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
        });
    match value {
        Some(v) => Ok(Some(v)),
        None if optional => Ok(None),
        None => Err(EnvError::KeyNotFound {
            kind: "secret",
            name: name.into(),
            key: key.into(),
        }),
    }
}

fn field_value(inp: &EnvInputs, path: &str) -> Result<String, EnvError> {
    let meta = &inp.pod.metadata;
    let spec = inp.pod.spec.clone().unwrap_or_default();
    let bracketed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_else(|| inp.node_name.to_string()),
        "spec.serviceAccountName" => spec
            .service_account_name
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => inp.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => inp.host_ip.to_string(),
        _ => {
            if let Some(k) = bracketed("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = bracketed("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(EnvError::UnsupportedField(path.into()));
            }
        }
    })
}

fn resource_value(container: &Container, resource: &str) -> Result<String, EnvError> {
    let res = container.resources.clone().unwrap_or_default();
    let (table, name) = match resource.split_once('.') {
        Some(("limits", n)) => (res.limits, n),
        Some(("requests", n)) => (res.requests, n),
        _ => (None, resource),
    };
    table
        .and_then(|t| t.get(name).map(|q| q.0.clone()))
        .ok_or_else(|| EnvError::UnsetResource(resource.into()))
}

/// Expands `$(VAR)` references to already-defined variables; `$$` escapes a dollar.
pub fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(end) = after.strip_prefix('(').and_then(|a| a.find(')')) {
            let name = &after[1..=end];
            match defined.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[i..i + end + 3]),
            }
            rest = &after[end + 2..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

static SVC_FQDN: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"\b([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.svc(?:\.cluster\.local)?\.?\b").ok()
});
static URL_HOST: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"://([^@/?#\s]*@)?([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)(?:\.([a-z0-9](?:[-a-z0-9]*[a-z0-9])?))?([:/?]|$)",
    )
    .ok()
});

fn cluster_ip<'a>(services: &'a [Service], ns: &str, name: &str) -> Option<&'a str> {
    services
        .iter()
        .find(|s| {
            s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name)
        })
        .and_then(|s| s.spec.as_ref()?.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

/// Rewrites `<svc>.<ns>.svc[.cluster.local]` anywhere, and URL hosts `<svc>` / `<svc>.<ns>` of
/// existing Services (in the pod's namespace for the short form), to the Service's cluster IP.
pub fn rewrite_service_names(value: &str, pod_ns: &str, services: &[Service]) -> String {
    let mut out = value.to_string();
    if let Some(re) = SVC_FQDN.as_ref() {
        out = re
            .replace_all(&out, |c: &regex::Captures| {
                cluster_ip(services, &c[2], &c[1]).map_or_else(|| c[0].to_string(), str::to_string)
            })
            .into_owned();
    }
    if let Some(re) = URL_HOST.as_ref() {
        out = re
            .replace_all(&out, |c: &regex::Captures| {
                // Credentials before the host (`amqp://user:pass@host`) are kept as they are.
                let userinfo = c.get(1).map_or("", |m| m.as_str());
                let ns = c.get(3).map_or(pod_ns, |m| m.as_str());
                match cluster_ip(services, ns, &c[2]) {
                    Some(ip) => format!("://{userinfo}{ip}{}", &c[4]),
                    None => c[0].to_string(),
                }
            })
            .into_owned();
    }
    out
}

/// Replaces a leading volume mount path with the directory kubesim wrote the volume to.
pub fn rewrite_mount_paths(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, dir) in mounts {
        let mount = mount.trim_end_matches('/');
        if mount.is_empty() {
            continue;
        }
        if value == mount {
            return dir.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(mount).filter(|r| r.starts_with('/')) {
            return format!("{}{rest}", dir.display());
        }
    }
    value.to_string()
}

/// The environment variable name kubesim uses to tell a process where a volume lives.
pub fn volume_env_name(volume: &str) -> String {
    let upper: String = volume
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("KUBESIM_VOLUME_{upper}")
}

fn service_links(inp: &EnvInputs, ns: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in inp
        .services
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
    {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let Some(ip) = cluster_ip(inp.services, ns, &name) else {
            continue;
        };
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let Some(first) = ports.first() else {
            continue;
        };
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                let pn = pn.to_ascii_uppercase().replace('-', "_");
                out.push((format!("{prefix}_SERVICE_PORT_{pn}"), p.port.to_string()));
            }
        }
    }
    out
}

/// The full environment for `container`, later entries overriding earlier ones.
pub fn resolve(inp: &EnvInputs, container: &Container) -> Result<Vec<(String, String)>, EnvError> {
    let ns = inp.pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = inp.pod.metadata.name.clone().unwrap_or_default();
    let port = container
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .map_or(DEFAULT_PORT, |p| p.container_port);
    let mut env: Vec<(String, String)> = vec![
        ("HOSTNAME".into(), pod_name.clone()),
        ("LISTEN_ADDR".into(), format!("{}:{port}", inp.pod_ip)),
        ("KUBESIM_POD_IP".into(), inp.pod_ip.to_string()),
        ("KUBESIM_POD_NAME".into(), pod_name),
        ("KUBESIM_POD_NAMESPACE".into(), ns.clone()),
    ];
    for m in container.volume_mounts.iter().flatten() {
        if let Some((_, dir)) = inp.mounts.iter().find(|(p, _)| *p == m.mount_path) {
            env.push((volume_env_name(&m.name), dir.display().to_string()));
        }
    }
    let enable_links = inp
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    if enable_links {
        env.extend(service_links(inp, &ns));
    }
    // The API server's Service, in every pod whatever its namespace or enableServiceLinks.
    if ns != "default" || !enable_links {
        env.extend(
            service_links(inp, "default")
                .into_iter()
                .filter(|(k, _)| k.starts_with("KUBERNETES_SERVICE_")),
        );
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match inp.config_maps.get(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        env.push((format!("{prefix}{k}"), v.clone()));
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match inp.secrets.get(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        env.push((
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        ));
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(r) = &from.config_map_key_ref {
                config_map_value(inp, &r.name, &r.key, r.optional == Some(true))?
            } else if let Some(r) = &from.secret_key_ref {
                secret_value(inp, &r.name, &r.key, r.optional == Some(true))?
            } else if let Some(r) = &from.field_ref {
                Some(field_value(inp, &r.field_path)?)
            } else if let Some(r) = &from.resource_field_ref {
                Some(resource_value(container, &r.resource)?)
            } else {
                None
            }
        } else {
            Some(expand(var.value.as_deref().unwrap_or_default(), &env))
        };
        if let Some(value) = value {
            env.push((var.name.clone(), value));
        }
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        let mut v = rewrite_mount_paths(&rewrite_service_names(&v, &ns, inp.services), inp.mounts);
        if k == "LISTEN_ADDR" {
            // A wildcard listen address would collide between pods; bind the pod's own IP instead.
            if let Some(port) = v.strip_prefix("0.0.0.0:").or_else(|| v.strip_prefix(':')) {
                v = format!("{}:{port}", inp.pod_ip);
            }
        }
        out.retain(|(ok, _)| *ok != k);
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec,
        SecretKeySelector, ServicePort, ServiceSpec,
    };
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("users-abc".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: None,
        }
    }

    fn service(name: &str, ns: &str, ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn from(name: &str, source: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(source),
        }
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn literals_references_downward_api_and_listen_addr_resolve() {
        // The process sees the spec's env with references resolved and LISTEN_ADDR on its pod IP.
        let p = pod();
        let cms = BTreeMap::from([(
            "cfg".to_string(),
            ConfigMap {
                data: Some(BTreeMap::from([("level".to_string(), "debug".to_string())])),
                ..Default::default()
            },
        )]);
        let secrets = BTreeMap::from([(
            "jwt".to_string(),
            Secret {
                data: Some(BTreeMap::from([(
                    "key".to_string(),
                    ByteString(b"s3cret".to_vec()),
                )])),
                ..Default::default()
            },
        )]);
        let services = [service("auth", "shop", "127.1.0.9")];
        let inp = EnvInputs {
            pod: &p,
            pod_ip: Ipv4Addr::new(127, 2, 0, 5),
            host_ip: Ipv4Addr::LOCALHOST,
            node_name: "kubesim-node",
            config_maps: &cms,
            secrets: &secrets,
            services: &services,
            mounts: &[],
        };
        let c = Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                container_port: 9000,
                ..Default::default()
            }]),
            env: Some(vec![
                var("A", "x"),
                var("B", "$(A)-y-$$(A)"),
                from(
                    "LEVEL",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "level".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "JWT",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "jwt".into(),
                            key: "key".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "POD_IP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "status.podIP".into(),
                            api_version: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "NS",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.namespace".into(),
                            api_version: None,
                        }),
                        ..Default::default()
                    },
                ),
            ]),
            ..Default::default()
        };
        let env = resolve(&inp, &c).expect("resolves");
        assert_eq!(get(&env, "LISTEN_ADDR"), Some("127.2.0.5:9000"));
        assert_eq!(get(&env, "B"), Some("x-y-$(A)"));
        assert_eq!(get(&env, "LEVEL"), Some("debug"));
        assert_eq!(get(&env, "JWT"), Some("s3cret"));
        assert_eq!(get(&env, "POD_IP"), Some("127.2.0.5"));
        assert_eq!(get(&env, "NS"), Some("shop"));
        assert_eq!(get(&env, "AUTH_SERVICE_HOST"), Some("127.1.0.9"));
        assert_eq!(get(&env, "AUTH_SERVICE_PORT_HTTP"), Some("80"));
    }

    #[test]
    fn a_missing_config_map_is_a_config_error_unless_optional() {
        // The kubelet refuses to start a container whose required reference is missing.
        let p = pod();
        let empty = BTreeMap::new();
        let inp = EnvInputs {
            pod: &p,
            pod_ip: Ipv4Addr::new(127, 2, 0, 5),
            host_ip: Ipv4Addr::LOCALHOST,
            node_name: "n",
            config_maps: &empty,
            secrets: &BTreeMap::new(),
            services: &[],
            mounts: &[],
        };
        let mut sel = ConfigMapKeySelector {
            name: "gone".into(),
            key: "k".into(),
            optional: None,
        };
        let c = |sel: ConfigMapKeySelector| Container {
            name: "c".into(),
            env: Some(vec![from(
                "X",
                EnvVarSource {
                    config_map_key_ref: Some(sel),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        assert_eq!(
            resolve(&inp, &c(sel.clone())),
            Err(EnvError::ConfigMapNotFound("gone".into()))
        );
        sel.optional = Some(true);
        let env = resolve(&inp, &c(sel)).expect("optional");
        assert_eq!(get(&env, "X"), None);
    }

    #[test]
    fn service_dns_names_become_cluster_ips() {
        // Without cluster DNS, names of existing Services are replaced by their cluster IPs.
        let services = [
            service("users", "shop", "127.1.0.3"),
            service("auth", "other", "127.1.0.4"),
        ];
        let r = |v: &str| rewrite_service_names(v, "shop", &services);
        assert_eq!(
            r("http://users.shop.svc.cluster.local:8080/x"),
            "http://127.1.0.3:8080/x"
        );
        assert_eq!(r("users.shop.svc:80"), "127.1.0.3:80");
        assert_eq!(r("http://users:8080"), "http://127.1.0.3:8080");
        assert_eq!(r("http://auth.other/"), "http://127.1.0.4/");
        assert_eq!(
            r("http://auth:1"),
            "http://auth:1",
            "short names resolve in the pod's namespace only"
        );
        assert_eq!(r("http://example.com/"), "http://example.com/");
        assert_eq!(
            r("amqp://app:s3cret@users:5672/%2f"),
            "amqp://app:s3cret@127.1.0.3:5672/%2f",
            "credentials before the host are kept"
        );
        assert_eq!(r("amqp://users@auth.other"), "amqp://users@127.1.0.4");
        assert_eq!(r("nosuch.shop.svc"), "nosuch.shop.svc");
    }

    #[test]
    fn mount_paths_point_into_the_pod_directory() {
        // A path under a volume's mountPath is rewritten to the directory holding that volume.
        let mounts = [(
            "/etc/config".to_string(),
            PathBuf::from("/state/pod/volumes/config"),
        )];
        assert_eq!(
            rewrite_mount_paths("/etc/config/app.yaml", &mounts),
            "/state/pod/volumes/config/app.yaml"
        );
        assert_eq!(
            rewrite_mount_paths("/etc/config", &mounts),
            "/state/pod/volumes/config"
        );
        assert_eq!(rewrite_mount_paths("/etc/configx", &mounts), "/etc/configx");
        assert_eq!(volume_env_name("jwt-secret"), "KUBESIM_VOLUME_JWT_SECRET");
    }
}
