//! The Deployment that runs the MicroService's pods.
//!
//! Its selector is the app labels only: the traffic membership label may be flipped on a pod by
//! the failover engine, and a selector containing it would orphan that pod from its ReplicaSet.
//! While autoscaling is on, `replicas` is left out so the HPA, not Flotilla, owns it.

use std::collections::BTreeMap;

use flotilla_crds::{annotations, labels};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapKeySelector, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    EnvVarSource, GRPCAction, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::configmap::{config_hash, config_map_name};
use super::meta::{child_meta, common_labels, selector_labels};
use crate::validate::{is_env_name, ValidatedSpec};

/// Name of the application container in the pod.
pub const CONTAINER_NAME: &str = "app";
/// Name of the config volume.
const CONFIG_VOLUME: &str = "config";
/// Liveness failures tolerated at least, whatever `failureThreshold` says: a restart is far more
/// disruptive than being taken out of traffic, so liveness is more patient than readiness.
const MIN_LIVENESS_FAILURES: i32 = 3;
/// Liveness restarts a wedged process; it need not be as quick as readiness, and probing it every
/// second restarts slow-but-healthy pods on a loaded node.
const MIN_LIVENESS_PERIOD_SECONDS: i32 = 5;
/// A startup probe on the liveness path holds liveness off until the process first answers, for
/// up to this many one-second probes, so a slow start is not a crash loop.
const STARTUP_PROBE_FAILURES: i32 = 120;

/// The Deployment for the MicroService, with what the operator gives every container (`op`).
pub fn build_deployment(v: &ValidatedSpec, op: &OperatorInputs) -> Deployment {
    let s = &v.spec;
    let mut pod_labels = common_labels(v);
    if s.failover.enabled {
        pod_labels.insert(labels::serves(&v.name), labels::SERVES_TRUE.into());
    }
    let mut pod_annotations: BTreeMap<String, String> =
        s.pod_annotations.clone().unwrap_or_default();
    if let Some(hash) = config_hash(v) {
        pod_annotations.insert(annotations::CONFIG_HASH.into(), hash);
    }
    let has_config = s.config.as_ref().is_some_and(|c| !c.is_empty());
    let mount = s.config_mount_path.as_ref().filter(|_| has_config);
    let container = container(v, mount, op);
    let volumes = mount.map(|_| {
        vec![Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&v.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]
    });
    let pod = PodSpec {
        containers: vec![container],
        volumes,
        service_account_name: s.service_account_name.clone(),
        node_selector: s.node_selector.clone(),
        tolerations: s.tolerations.clone(),
        image_pull_secrets: s.image_pull_secrets.clone(),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };
    Deployment {
        metadata: child_meta(v, &v.name),
        spec: Some(DeploymentSpec {
            replicas: if s.autoscaling.is_some() {
                None
            } else {
                Some(s.replicas)
            },
            selector: LabelSelector {
                match_labels: Some(selector_labels(&v.name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The service's one container: image, port, env, probes, a locked-down security context and
/// the config mount when there is one.
fn container(v: &ValidatedSpec, mount: Option<&String>, op: &OperatorInputs) -> Container {
    let s = &v.spec;
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(s.image.clone()),
        command: s.command.clone(),
        args: s.args.clone(),
        ports: Some(vec![ContainerPort {
            name: Some(s.port_name.clone()),
            container_port: s.port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(env(v, op)),
        resources: s.resources.clone(),
        startup_probe: Some(startup_probe(v)),
        liveness_probe: Some(probe(v, &s.health.liveness_path, true)),
        readiness_probe: Some(probe(v, &s.health.readiness_path, false)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: mount.map(|p| {
            vec![VolumeMount {
                name: CONFIG_VOLUME.into(),
                mount_path: p.clone(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]
        }),
        ..Container::default()
    }
}

/// Whole seconds, rounded up, at least one (kubelet probes have second granularity).
fn ceil_seconds(millis: i32) -> i32 {
    (millis.max(1) + 999) / 1000
}

/// An HTTP GET of `path`, or for a gRPC service (`health.grpc`) a native `grpc` readiness probe
/// and a TCP liveness (and startup) probe: the standard health service reports `NOT_SERVING`
/// when a dependency is down, and a liveness probe that listened to it would make the kubelet
/// restart every pod during a database outage; liveness only asks whether the process accepts
/// connections.
fn probe(v: &ValidatedSpec, path: &str, liveness: bool) -> Probe {
    let h = &v.spec.health;
    let probe = Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(v.spec.port_name.clone()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(h.initial_delay_seconds),
        period_seconds: Some(if liveness {
            ceil_seconds(h.period_millis).max(MIN_LIVENESS_PERIOD_SECONDS)
        } else {
            ceil_seconds(h.period_millis)
        }),
        timeout_seconds: Some(ceil_seconds(h.timeout_millis)),
        failure_threshold: Some(if liveness {
            h.failure_threshold.max(MIN_LIVENESS_FAILURES)
        } else {
            h.failure_threshold
        }),
        // The API server rejects a liveness probe with successThreshold other than 1.
        success_threshold: Some(if liveness { 1 } else { h.success_threshold }),
        ..Probe::default()
    };
    match &h.grpc {
        None => probe,
        Some(_) if liveness => Probe {
            http_get: None,
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String(v.spec.port_name.clone()),
                host: None,
            }),
            ..probe
        },
        Some(g) => Probe {
            http_get: None,
            grpc: Some(GRPCAction {
                port: v.spec.port,
                service: Some(g.service.clone()),
            }),
            ..probe
        },
    }
}

/// The liveness endpoint probed every second until it first answers; liveness and readiness start
/// after it succeeds.
fn startup_probe(v: &ValidatedSpec) -> Probe {
    let h = &v.spec.health;
    Probe {
        period_seconds: Some(1),
        failure_threshold: Some(STARTUP_PROBE_FAILURES),
        success_threshold: Some(1),
        ..probe(v, &h.liveness_path, true)
    }
}

/// What the builders take from the operator rather than from the MicroService.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorInputs {
    /// The public keys of traffic verdicts, given to every container as
    /// `FLOTILLA_VERDICT_KEYS` so its pods can tell the operator's verdicts from anybody's.
    pub verdict_keys: Option<String>,
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Container environment, in order: downward API, the operator's verdict keys, dependency
/// URLs, config keys, then the user's `env` (last, so it wins).
fn env(v: &ValidatedSpec, op: &OperatorInputs) -> Vec<EnvVar> {
    let mut out = vec![
        field_env("POD_IP", "status.podIP"),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Some(keys) = &op.verdict_keys {
        out.push(EnvVar {
            name: flotilla_crds::traffic::KEYS_ENV.into(),
            value: Some(keys.clone()),
            ..EnvVar::default()
        });
    }
    for d in &v.dependencies {
        out.push(EnvVar {
            name: d.env_name.clone(),
            value: Some(d.url.clone()),
            ..EnvVar::default()
        });
    }
    for key in v
        .spec
        .config
        .iter()
        .flat_map(|c| c.keys())
        .filter(|k| is_env_name(k))
    {
        out.push(EnvVar {
            name: key.clone(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: config_map_name(&v.name),
                    key: key.clone(),
                    ..ConfigMapKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    out.extend(v.spec.env.clone().unwrap_or_default());
    // Keep the last entry of each name: user env beats config keys beats dependency URLs beats
    // the downward API. Duplicate names would make the apply fail (env is a map-list by name).
    let mut seen = std::collections::BTreeSet::new();
    let mut kept: Vec<EnvVar> = out
        .into_iter()
        .rev()
        .filter(|e| seen.insert(e.name.clone()))
        .collect();
    kept.reverse();
    kept
}

#[cfg(test)]
#[path = "deployment_tests.rs"]
mod tests;
