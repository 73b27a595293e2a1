//! The engine's view of the cluster: the MicroServices whose pods are probed and those pods, as
//! plain values built from watched objects.
//!
//! `Inventory::build` is pure (objects in, values out); `source.rs` feeds it from reflectors.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use flotilla_crds::{
    conditions, labels, FailoverStatus, MicroService, MicroServiceSpec, RolloutPhase,
    RolloutStrategy, TrafficStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::policy::{FailoverPolicy, Mode, ProbePolicy, StickyAction};

/// Namespace and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    /// Namespace.
    pub ns: String,
    /// Name.
    pub name: String,
}

impl ObjKey {
    /// A key from its parts.
    pub fn new(ns: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            ns: ns.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

/// A MicroService as the engine needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    /// Namespace and name.
    pub key: ObjKey,
    /// `metadata.uid`, for Events about the MicroService.
    pub uid: Option<String>,
    /// `metadata.generation`, for condition `observedGeneration`.
    pub generation: Option<i64>,
    /// Whether `spec.failover.enabled` is set (a service may be probed only as someone's fallback).
    pub failover_enabled: bool,
    /// A guarded rollout of this service is analysing a canary: its pods are probed and their
    /// metrics scraped for the analysis, whether or not failover is enabled.
    pub analysing: bool,
    /// How its pods are probed.
    pub probe: ProbePolicy,
    /// How it fails over.
    pub failover: FailoverPolicy,
    /// The container port name (a fallback must use the same one).
    pub port_name: String,
    /// Whether its request figures are reported in `status.traffic` (scraping its pods'
    /// metrics for them).
    pub report_traffic: bool,
    /// Its pods are only scraped, for the request figures: the engine neither decides it nor
    /// probes it as anyone's fallback.
    pub scrape_only: bool,
    /// The current `status.failover`, as last written.
    pub status: Option<FailoverStatus>,
    /// The current `status.traffic`, as last written.
    pub traffic: Option<TrafficStatus>,
    /// The current `FailedOver` and `Flapping` conditions.
    pub conditions: Vec<Condition>,
}

/// A pod as the engine needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    /// Namespace and name.
    pub key: ObjKey,
    /// The MicroService it belongs to (`app.kubernetes.io/instance`).
    pub service: String,
    /// The pod IP, once assigned.
    pub ip: Option<IpAddr>,
    /// The kubelet's Ready condition.
    pub ready: bool,
    /// Its `serves.flotilla.rs/*` labels.
    pub serves: BTreeMap<String, String>,
    /// `metadata.uid`: an eviction names it so it cannot hit a later pod of the same name.
    pub uid: Option<String>,
    /// A canary pod of a guarded rollout (label `rollout.flotilla.rs/track: canary`).
    pub canary: bool,
}

/// Everything the prober, decider and writer read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Services whose pods are probed: failover-enabled ones, their fallbacks, and those whose
    /// guarded rollout is under analysis; and those only scraped for their request figures.
    pub services: BTreeMap<ObjKey, ServiceInfo>,
    /// Pods of those services that are not terminating.
    pub pods: BTreeMap<ObjKey, PodInfo>,
    /// Pod keys per service.
    pub by_service: BTreeMap<ObjKey, Vec<ObjKey>>,
    /// MicroServices the engine does not decide whose `status.failover` still holds a report:
    /// failover was turned off, or an analysis ended, while no writer was there to withdraw it
    /// (the operator down, or leadership changing hands).
    pub stale_reports: BTreeSet<ObjKey>,
}

impl ServiceInfo {
    /// Whether the engine decides this service (and the writer reports on it): failover is
    /// enabled or a rollout analysis needs its pods' verdicts.
    pub fn decided(&self) -> bool {
        self.failover_enabled || self.analysing
    }

    /// Probed only for a rollout analysis: verdicts reach `status.failover` (marked observe-only),
    /// but traffic never moves and no failover Events or conditions are written.
    pub fn analysis_only(&self) -> bool {
        self.analysing && !self.failover_enabled
    }
}

/// The failover policy the engine applies: the spec's, with metrics scraped while a rollout is
/// analysed (the analysis compares 5xx ratios), and reduced to observing when the service is
/// probed only for that analysis.
fn effective_policy(ms: &MicroService, analysing: bool) -> FailoverPolicy {
    let spec = FailoverPolicy::from(&ms.spec);
    match (analysing, ms.spec.failover.enabled) {
        (false, _) => spec,
        (true, true) => FailoverPolicy {
            scrape_metrics: true,
            ..spec
        },
        (true, false) => FailoverPolicy {
            fallback: None,
            mode: Mode::Observe,
            max_error_rate: None,
            scrape_metrics: true,
            sticky: StickyAction::Report,
            ..spec
        },
    }
}

/// Whether a guarded rollout of `ms` is being analysed.
fn analysing(ms: &MicroService) -> bool {
    ms.spec.rollout.strategy == RolloutStrategy::Guarded
        && ms
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .is_some_and(|r| r.phase == RolloutPhase::Analyzing)
}

/// Whether the request figures of a MicroService are reported (`health.reportTraffic`; by
/// default where its metrics are read anyway: failover scraping them, or a guarded rollout whose
/// analysis compares latencies).
pub fn reports_traffic(spec: &MicroServiceSpec) -> bool {
    spec.health.report_traffic.unwrap_or(
        (spec.failover.enabled && spec.failover.scrape_metrics)
            || spec.rollout.strategy == RolloutStrategy::Guarded,
    )
}

/// Whether `status.failover` or `status.traffic` of `ms` holds anything.
fn has_report(ms: &MicroService) -> bool {
    ms.status.as_ref().is_some_and(|s| {
        s.failover
            .as_ref()
            .is_some_and(|f| *f != FailoverStatus::default())
            || s.traffic
                .as_ref()
                .is_some_and(|t| *t != TrafficStatus::default())
    })
}

/// The namespace and name of `ms`, if it has both.
fn key_of(ms: &MicroService) -> Option<ObjKey> {
    Some(ObjKey::new(
        ms.metadata.namespace.clone()?,
        ms.metadata.name.clone()?,
    ))
}

fn service_info(ms: &MicroService) -> Option<ServiceInfo> {
    let key = key_of(ms)?;
    let status = ms.status.as_ref();
    let analysing = analysing(ms);
    Some(ServiceInfo {
        key,
        uid: ms.metadata.uid.clone(),
        generation: ms.metadata.generation,
        failover_enabled: ms.spec.failover.enabled,
        analysing,
        probe: ProbePolicy::from(&ms.spec),
        failover: effective_policy(ms, analysing),
        port_name: ms.spec.port_name.clone(),
        report_traffic: reports_traffic(&ms.spec),
        scrape_only: false,
        status: status.and_then(|s| s.failover.clone()),
        traffic: status.and_then(|s| s.traffic.clone()),
        conditions: status
            .map(|s| {
                s.conditions
                    .iter()
                    .filter(|c| {
                        c.type_ == conditions::FAILED_OVER || c.type_ == conditions::FLAPPING
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// What the engine knows of a pod; `None` for one being deleted or not a service's.
pub(super) fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let pod_labels = meta.labels.as_ref()?;
    let service = pod_labels.get(labels::INSTANCE)?.clone();
    let status = pod.status.as_ref();
    let ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok());
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let serves = pod_labels
        .iter()
        .filter(|(k, _)| k.starts_with(labels::SERVES_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(PodInfo {
        key: ObjKey::new(meta.namespace.clone()?, meta.name.clone()?),
        canary: pod_labels.get(labels::TRACK).map(String::as_str) == Some(labels::TRACK_CANARY),
        service,
        ip,
        ready,
        serves,
        uid: meta.uid.clone(),
    })
}

impl Inventory {
    /// Builds the inventory from watched MicroServices and pods. Objects without a name or
    /// namespace are skipped.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a MicroService>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        // Only the decided services, their fallbacks and those reporting traffic are described:
        // most MicroServices of a large cluster are none of these, and the inventory is rebuilt
        // while any of them changes. A service left out whose status still holds a report goes
        // to `stale_reports`.
        let services: Vec<&MicroService> = services.into_iter().collect();
        let mut wanted: BTreeMap<ObjKey, ServiceInfo> = BTreeMap::new();
        let mut stale_reports = BTreeSet::new();
        for ms in &services {
            if ms.spec.failover.enabled || analysing(ms) || reports_traffic(&ms.spec) {
                if let Some(s) = service_info(ms) {
                    wanted.insert(s.key.clone(), s);
                }
            } else if has_report(ms) {
                stale_reports.extend(key_of(ms));
            }
        }
        let fallbacks: BTreeSet<ObjKey> = wanted
            .values()
            .filter(|s| s.decided())
            .filter_map(|s| {
                let fb = s.failover.fallback.as_ref()?;
                Some(ObjKey::new(s.key.ns.clone(), fb.clone()))
            })
            .collect();
        let missing: Vec<&&MicroService> = services
            .iter()
            .filter(|ms| {
                key_of(ms).is_some_and(|k| fallbacks.contains(&k) && !wanted.contains_key(&k))
            })
            .collect();
        for s in missing.into_iter().filter_map(|ms| service_info(ms)) {
            wanted.insert(s.key.clone(), s);
        }
        for s in wanted.values_mut() {
            s.scrape_only = s.report_traffic && !s.decided() && !fallbacks.contains(&s.key);
        }
        Self {
            stale_reports,
            ..Self::from_parts(wanted.into_values(), pods.into_iter().filter_map(pod_info))
        }
    }

    /// Builds the inventory from engine values; pods of services not listed are dropped.
    pub fn from_parts(
        services: impl IntoIterator<Item = ServiceInfo>,
        pods: impl IntoIterator<Item = PodInfo>,
    ) -> Self {
        let mut inv = Inventory {
            services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
            ..Inventory::default()
        };
        for p in pods {
            let svc = ObjKey::new(p.key.ns.clone(), p.service.clone());
            if inv.services.contains_key(&svc) {
                inv.by_service.entry(svc).or_default().push(p.key.clone());
                inv.pods.insert(p.key.clone(), p);
            }
        }
        inv
    }

    /// The pods of a service.
    pub fn pods_of<'a>(&'a self, svc: &ObjKey) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.by_service
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_crds::MicroServiceSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn ms(name: &str, enabled: bool, fallback: Option<&str>) -> MicroService {
        let mut spec = MicroServiceSpec::with_image("img");
        spec.failover.enabled = enabled;
        spec.failover.fallback = fallback.map(str::to_owned);
        let mut m = MicroService::new(name, spec);
        m.metadata.namespace = Some("ns".into());
        m
    }

    fn pod(name: &str, svc: &str, ip: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(
                    [
                        (labels::INSTANCE.to_owned(), svc.to_owned()),
                        (labels::serves(svc), "true".to_owned()),
                        ("other".to_owned(), "x".to_owned()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn includes_enabled_services_their_fallbacks_and_their_pods_only() {
        // Only pods that matter for failover are probed.
        let services = [
            ms("a", true, Some("b")),
            ms("b", false, None),
            ms("c", false, None),
        ];
        let mut gone = pod("a-2", "a", "127.2.0.3", true);
        gone.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let pods = [
            pod("a-1", "a", "127.2.0.2", true),
            gone,
            pod("b-1", "b", "127.2.0.4", false),
            pod("c-1", "c", "127.2.0.5", true),
        ];
        let inv = Inventory::build(&services, &pods);
        let names: Vec<_> = inv.services.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let pods: Vec<_> = inv.pods.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(pods, ["a-1", "b-1"]);
        let a1 = &inv.pods[&ObjKey::new("ns", "a-1")];
        assert!(a1.ready);
        assert_eq!(a1.ip, "127.2.0.2".parse().ok());
        assert_eq!(a1.serves.len(), 1);
        assert!(!inv.pods[&ObjKey::new("ns", "b-1")].ready);
        assert_eq!(inv.pods_of(&ObjKey::new("ns", "a")).count(), 1);
    }

    fn guarded(name: &str, enabled: bool, phase: RolloutPhase) -> MicroService {
        let mut m = ms(name, enabled, None);
        m.spec.rollout.strategy = RolloutStrategy::Guarded;
        m.status = Some(flotilla_crds::MicroServiceStatus {
            rollout: Some(flotilla_crds::RolloutStatus {
                phase,
                ..Default::default()
            }),
            ..Default::default()
        });
        m
    }

    #[test]
    fn an_analysed_rollout_is_probed_only_to_observe_without_failover() {
        // A guarded rollout under analysis has its pods probed and scraped even with failover
        // off, in Observe mode with no fallback; once the analysis is over it leaves.
        let mut b = guarded("b", false, RolloutPhase::Promoted);
        b.spec.health.report_traffic = Some(false);
        let services = [
            guarded("a", false, RolloutPhase::Analyzing),
            b,
            guarded("c", true, RolloutPhase::Analyzing),
        ];
        let inv = Inventory::build(&services, &[]);
        let names: Vec<_> = inv.services.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        let a = &inv.services[&ObjKey::new("ns", "a")];
        assert!(a.analysis_only() && a.decided());
        assert_eq!(a.failover.mode, Mode::Observe);
        assert!(a.failover.scrape_metrics);
        assert_eq!(a.failover.fallback, None);
        // With failover on, the analysis only turns scraping on.
        let c = &inv.services[&ObjKey::new("ns", "c")];
        assert!(!c.analysis_only());
        assert_eq!(c.failover.mode, Mode::Enforce);
        assert!(c.failover.scrape_metrics);
    }

    #[test]
    fn reports_on_services_no_longer_decided_are_stale() {
        // `status.failover` holding a report on a service that is neither failover-enabled nor
        // analysed was left by an earlier writer; an empty one, or a decided service's, is not.
        let report = |mut m: MicroService, active: bool| {
            let status = m.status.get_or_insert_with(Default::default);
            status.failover = Some(FailoverStatus {
                active: active.then_some(flotilla_crds::ActiveTarget::Primary),
                ..Default::default()
            });
            m
        };
        let mut promoted = guarded("promoted", false, RolloutPhase::Promoted);
        promoted.spec.health.report_traffic = Some(false);
        let mut figures = ms("figures", false, None);
        figures.status = Some(flotilla_crds::MicroServiceStatus {
            traffic: Some(TrafficStatus {
                requests_per_second: Some(1.0),
                ..TrafficStatus::default()
            }),
            ..Default::default()
        });
        let services = [
            report(ms("off", false, None), true),
            report(promoted, true),
            figures,
            report(ms("emptied", false, None), false),
            report(ms("on", true, None), true),
            report(guarded("analysing", false, RolloutPhase::Analyzing), true),
            ms("never", false, None),
        ];
        let inv = Inventory::build(&services, &[]);
        let stale: Vec<_> = inv.stale_reports.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(stale, ["figures", "off", "promoted"]);
    }

    #[test]
    fn traffic_is_reported_where_metrics_are_read_anyway_or_when_asked() {
        // By default, figures come with failover scraping metrics and with guarded rollouts;
        // `reportTraffic` turns them on or off anywhere. A service reporting figures that the
        // engine neither decides nor probes as a fallback is only scraped.
        let plain = ms("plain", false, None);
        assert!(!reports_traffic(&plain.spec));
        let mut probed = ms("probed", true, Some("backup"));
        assert!(!reports_traffic(&probed.spec), "failover without scraping");
        probed.spec.failover.scrape_metrics = true;
        assert!(reports_traffic(&probed.spec));
        let guarded = guarded("guarded", false, RolloutPhase::Stable);
        assert!(reports_traffic(&guarded.spec));
        let mut asked = ms("asked", false, None);
        asked.spec.health.report_traffic = Some(true);
        let mut backup = ms("backup", false, None);
        backup.spec.health.report_traffic = Some(true);
        let mut refused = guarded.clone();
        refused.metadata.name = Some("refused".into());
        refused.spec.health.report_traffic = Some(false);
        let mut canary = pod("guarded-c", "guarded", "127.2.0.9", true);
        if let Some(l) = canary.metadata.labels.as_mut() {
            l.insert(labels::TRACK.into(), labels::TRACK_CANARY.into());
        }
        let pods = [pod("guarded-1", "guarded", "127.2.0.8", true), canary];
        let inv = Inventory::build(&[plain, probed, guarded, asked, backup, refused], &pods);
        let shown: Vec<_> = inv
            .services
            .values()
            .map(|s| (s.key.name.as_str(), s.report_traffic, s.scrape_only))
            .collect();
        assert_eq!(
            shown,
            [
                ("asked", true, true),
                ("backup", true, false),
                ("guarded", true, true),
                ("probed", true, false),
            ]
        );
        let canaries: Vec<_> = inv
            .pods
            .values()
            .map(|p| (p.key.name.as_str(), p.canary))
            .collect();
        assert_eq!(canaries, [("guarded-1", false), ("guarded-c", true)]);
    }
}
