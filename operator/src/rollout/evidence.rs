//! What the canary pods show: the evidence the rollout state machine judges.
//!
//! Built from watched Pods (readiness, waiting reasons, restarts), when the failover engine
//! probes them its per-pod verdicts (`status.failover.pods`), and the canary and stable pods'
//! latencies from the request figures (`status.traffic`). Pure: objects in, values out.

use flotilla_crds::{annotations, labels, PodHealth, TrafficStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

/// Waiting reasons that mean a container will not become ready without a new template, so the
/// analysis need not wait for `readyTimeoutSeconds`.
pub const FATAL_WAITING_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// One canary pod as the analysis sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CanaryPod {
    /// Pod name.
    pub name: String,
    /// The pod-template revision it runs (`flotilla.rs/revision`).
    pub revision: Option<String>,
    /// Kubernetes `Ready` condition.
    pub ready: bool,
    /// A fatal waiting reason of its container (see [`FATAL_WAITING_REASONS`]).
    pub fatal_waiting: Option<String>,
    /// Container restarts.
    pub restarts: i32,
    /// The failover engine's verdict when it judges the pod unhealthy: its last probe result.
    pub probe_failure: Option<String>,
    /// The pod's 5xx ratio over the error-rate window, when its metrics are scraped.
    pub error_ratio: Option<f64>,
}

/// Everything the analysis knows about the canary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CanaryEvidence {
    /// The canary pods (of any revision; the state machine keeps those of the one it analyses).
    pub pods: Vec<CanaryPod>,
    /// Mean 5xx ratio of the stable pods, when known.
    pub stable_error_ratio: Option<f64>,
    /// The p99 latencies of the canary and the stable pods, when both are known.
    pub latency: Option<Latency>,
}

/// The canary and stable pods' p99 latencies over the request figures' window.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    /// The canary pods' p99 latency, in milliseconds.
    pub canary_millis: f64,
    /// The stable pods' p99 latency, in milliseconds.
    pub stable_millis: f64,
    /// When the figures were computed (their window ends here).
    pub observed_at: Timestamp,
}

impl Latency {
    /// The latencies in `status.traffic`, when it has both groups' p99 and a time.
    pub fn from_traffic(t: &TrafficStatus) -> Option<Self> {
        Some(Self {
            canary_millis: t.canary.as_ref()?.p99_latency_millis?,
            stable_millis: t.stable.as_ref()?.p99_latency_millis?,
            observed_at: t.observed_at.as_ref()?.0,
        })
    }
}

impl CanaryEvidence {
    /// Evidence from the pods of one MicroService and the failover engine's per-pod verdicts.
    /// Pods without the canary track label count as stable.
    pub fn from_pods(pods: &[Pod], verdicts: &[PodHealth]) -> Self {
        let mut canary = Vec::new();
        let mut stable_ratios = Vec::new();
        // A terminating pod is no evidence: it is one of an earlier canary (deleted on its
        // promotion or rollback, perhaps of this very template) or a stable pod on its way out,
        // and it turns unready as it stops.
        for pod in pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let verdict = verdicts.iter().find(|v| v.name == name);
            let is_canary = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::TRACK))
                .is_some_and(|t| t == labels::TRACK_CANARY);
            if !is_canary {
                stable_ratios.extend(verdict.and_then(|v| v.error_ratio));
                continue;
            }
            canary.push(canary_pod(pod, name, verdict));
        }
        let stable_error_ratio = (!stable_ratios.is_empty())
            .then(|| stable_ratios.iter().sum::<f64>() / stable_ratios.len() as f64);
        Self {
            pods: canary,
            stable_error_ratio,
            latency: None,
        }
    }

    /// The same evidence with the latencies of the request figures `traffic`.
    pub fn with_traffic(self, traffic: Option<&TrafficStatus>) -> Self {
        Self {
            latency: traffic.and_then(Latency::from_traffic),
            ..self
        }
    }
}

fn canary_pod(pod: &Pod, name: String, verdict: Option<&PodHealth>) -> CanaryPod {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let containers = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let fatal_waiting = containers
        .iter()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .find(|r| FATAL_WAITING_REASONS.contains(&r.as_str()));
    let restarts = containers.iter().map(|c| c.restart_count).sum();
    CanaryPod {
        revision: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::REVISION))
            .cloned(),
        name,
        ready,
        fatal_waiting,
        restarts,
        // Only failed probes of a kubelet-Ready pod are evidence: a pod not probed yet is not
        // "healthy" either, and one still starting fails probes until it listens (its readiness
        // is judged by `readyTimeoutSeconds`).
        probe_failure: verdict
            .filter(|v| ready && !v.healthy && v.consecutive_failures.unwrap_or(0) > 0)
            .map(|v| v.last_probe.clone().unwrap_or_else(|| "unhealthy".into())),
        error_ratio: verdict.and_then(|v| v.error_ratio),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_crds::TrafficFigures;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(name: &str, canary: bool, ready: bool, waiting: Option<&str>, restarts: i32) -> Pod {
        let mut l = BTreeMap::new();
        if canary {
            l.insert(labels::TRACK.to_string(), labels::TRACK_CANARY.to_string());
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(l),
                annotations: Some(BTreeMap::from([(
                    annotations::REVISION.to_string(),
                    "r2".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    restart_count: restarts,
                    state: waiting.map(|r| ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(r.into()),
                            ..ContainerStateWaiting::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    /// A terminating pod (an earlier canary of the same template being deleted, a stable pod on
    /// its way out) is neither canary nor baseline evidence.
    #[test]
    fn terminating_pods_are_no_evidence() {
        let mut old_canary = pod("c-old", true, false, None, 0);
        old_canary.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let mut leaving = pod("s-old", false, true, None, 0);
        leaving.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let verdicts = [PodHealth {
            name: "s-old".into(),
            healthy: true,
            error_ratio: Some(0.9),
            ..PodHealth::default()
        }];
        let pods = [old_canary, leaving, pod("c-new", true, true, None, 0)];
        let e = CanaryEvidence::from_pods(&pods, &verdicts);
        let names: Vec<&str> = e.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["c-new"]);
        assert_eq!(e.stable_error_ratio, None);
    }

    /// Canary pods are told apart by their track label, and each carries readiness, fatal waiting
    /// reasons, restarts and the prober's verdict; stable pods only feed the baseline ratio.
    #[test]
    fn canary_pods_carry_their_evidence() {
        let pods = [
            pod("s-1", false, true, None, 0),
            pod("c-1", true, false, Some("ImagePullBackOff"), 0),
            pod("c-2", true, true, Some("ContainerCreating"), 3),
        ];
        let verdicts = [
            PodHealth {
                name: "s-1".into(),
                healthy: true,
                error_ratio: Some(0.02),
                ..PodHealth::default()
            },
            PodHealth {
                name: "c-2".into(),
                healthy: false,
                last_probe: Some("http 503".into()),
                consecutive_failures: Some(2),
                error_ratio: Some(0.5),
                ..PodHealth::default()
            },
        ];
        let e = CanaryEvidence::from_pods(&pods, &verdicts);
        assert_eq!(e.stable_error_ratio, Some(0.02));
        assert_eq!(e.pods.len(), 2);
        assert_eq!(e.pods[0].name, "c-1");
        assert_eq!(e.pods[0].fatal_waiting.as_deref(), Some("ImagePullBackOff"));
        assert!(!e.pods[0].ready);
        assert_eq!(e.pods[0].probe_failure, None);
        assert_eq!(e.pods[1].fatal_waiting, None);
        assert_eq!(e.pods[1].restarts, 3);
        assert_eq!(e.pods[1].probe_failure.as_deref(), Some("http 503"));
        assert_eq!(e.pods[1].error_ratio, Some(0.5));
        assert_eq!(e.pods[1].revision.as_deref(), Some("r2"));
    }

    /// A canary pod the prober has not probed yet is not a probe failure.
    #[test]
    fn not_yet_probed_is_no_failure() {
        let verdicts = [PodHealth {
            name: "c-1".into(),
            healthy: false,
            last_probe: Some("not probed yet".into()),
            ..PodHealth::default()
        }];
        let e = CanaryEvidence::from_pods(&[pod("c-1", true, true, None, 0)], &verdicts);
        assert_eq!(e.pods[0].probe_failure, None);
        // Nor is a failed probe of a pod that is still starting.
        let starting = [PodHealth {
            consecutive_failures: Some(3),
            last_probe: Some("connect error".into()),
            ..verdicts[0].clone()
        }];
        let e = CanaryEvidence::from_pods(&[pod("c-1", true, false, None, 0)], &starting);
        assert_eq!(e.pods[0].probe_failure, None);
    }

    /// The latencies come from the canary and stable figures of `status.traffic`, and only
    /// when both groups have a p99: no figure, no comparison.
    #[test]
    fn latencies_come_from_both_groups_figures() {
        let p99 = |ms: Option<f64>| {
            Some(TrafficFigures {
                p99_latency_millis: ms,
                ..TrafficFigures::default()
            })
        };
        let at = Timestamp::UNIX_EPOCH;
        let t = TrafficStatus {
            p99_latency_millis: Some(9.0),
            observed_at: Some(Time(at)),
            canary: p99(Some(248.0)),
            stable: p99(Some(4.95)),
            ..TrafficStatus::default()
        };
        let e = CanaryEvidence::default().with_traffic(Some(&t));
        assert_eq!(
            e.latency,
            Some(Latency {
                canary_millis: 248.0,
                stable_millis: 4.95,
                observed_at: at,
            })
        );
        let few = TrafficStatus {
            canary: p99(None),
            ..t.clone()
        };
        assert_eq!(
            CanaryEvidence::default().with_traffic(Some(&few)).latency,
            None
        );
        let no_canary = TrafficStatus {
            canary: None,
            stable: None,
            ..t
        };
        assert_eq!(
            CanaryEvidence::default()
                .with_traffic(Some(&no_canary))
                .latency,
            None
        );
        assert_eq!(CanaryEvidence::default().with_traffic(None).latency, None);
    }
}
