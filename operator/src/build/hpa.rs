//! The autoscaling/v2 HorizontalPodAutoscaler for `spec.autoscaling`.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};

use super::meta::child_meta;
use crate::validate::ValidatedSpec;

fn utilization(resource: &str, percent: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: resource.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}

/// The HPA scaling the MicroService's Deployment, or `None` when autoscaling is off.
pub fn build_hpa(v: &ValidatedSpec) -> Option<HorizontalPodAutoscaler> {
    let a = v.spec.autoscaling.as_ref()?;
    let mut metrics = Vec::new();
    if let Some(p) = a.target_cpu_utilization_percentage {
        metrics.push(utilization("cpu", p));
    }
    if let Some(p) = a.target_memory_utilization_percentage {
        metrics.push(utilization("memory", p));
    }
    let behavior = a
        .scale_down_stabilization_seconds
        .map(|s| HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(s),
                ..HPAScalingRules::default()
            }),
            ..HorizontalPodAutoscalerBehavior::default()
        });
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(v, &v.name),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: v.name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            behavior,
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

#[cfg(test)]
mod tests {
    use flotilla_crds::{AutoscalingSpec, MicroServiceSpec};

    use super::*;
    use crate::build::testutil::validated;

    fn spec(cpu: Option<i32>, mem: Option<i32>, down: Option<i32>) -> MicroServiceSpec {
        let mut s = MicroServiceSpec::with_image("x");
        s.autoscaling = Some(AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 5,
            target_cpu_utilization_percentage: cpu,
            target_memory_utilization_percentage: mem,
            scale_down_stabilization_seconds: down,
        });
        s
    }

    /// The HPA targets the Deployment with the bounds and one metric per target.
    #[test]
    fn hpa_targets_deployment() {
        let hpa = build_hpa(&validated("auth", spec(Some(70), Some(80), Some(60))));
        let s = hpa
            .and_then(|h| h.spec)
            .unwrap_or_else(|| panic!("hpa expected"));
        assert_eq!(s.scale_target_ref.kind, "Deployment");
        assert_eq!(s.scale_target_ref.name, "auth");
        assert_eq!(s.min_replicas, Some(2));
        assert_eq!(s.max_replicas, 5);
        let metrics = s.metrics.unwrap_or_default();
        let targets: Vec<_> = metrics
            .iter()
            .filter_map(|m| m.resource.as_ref())
            .map(|r| (r.name.as_str(), r.target.average_utilization))
            .collect();
        assert_eq!(targets, vec![("cpu", Some(70)), ("memory", Some(80))]);
        let down = s
            .behavior
            .and_then(|b| b.scale_down)
            .and_then(|d| d.stabilization_window_seconds);
        assert_eq!(down, Some(60));
    }

    /// Only the requested metric is present and no behaviour without stabilisation.
    #[test]
    fn hpa_cpu_only() {
        let hpa = build_hpa(&validated("auth", spec(Some(50), None, None)));
        let s = hpa
            .and_then(|h| h.spec)
            .unwrap_or_else(|| panic!("hpa expected"));
        assert_eq!(s.metrics.unwrap_or_default().len(), 1);
        assert!(s.behavior.is_none());
    }

    /// No autoscaling, no HPA.
    #[test]
    fn no_autoscaling_no_hpa() {
        assert!(build_hpa(&validated("auth", MicroServiceSpec::with_image("x"))).is_none());
    }
}
