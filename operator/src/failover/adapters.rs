//! Adapters from the MicroService API types to the engine's own policy values, so the engine does
//! not depend on the exact spec shape. Pure.

use std::time::Duration;

use flotilla_crds::{FailoverMode, MicroServiceSpec, StickyConnections};

use super::policy::{FailoverPolicy, Mode, ProbePolicy, StickyAction};

fn millis(v: i32) -> Duration {
    Duration::from_millis(u64::try_from(v.max(1)).unwrap_or(1))
}

fn seconds(v: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.max(0)).unwrap_or(0))
}

/// A percentage from the spec, clamped to 0..=100 (zero is meaningful here).
fn percent(v: i32) -> u32 {
    u32::try_from(v.clamp(0, 100)).unwrap_or(0)
}

fn count(v: i32) -> u32 {
    u32::try_from(v.max(1)).unwrap_or(1)
}

impl From<&MicroServiceSpec> for ProbePolicy {
    fn from(spec: &MicroServiceSpec) -> Self {
        let h = &spec.health;
        Self {
            period: millis(h.period_millis),
            timeout: millis(h.timeout_millis),
            failure_threshold: count(h.failure_threshold),
            success_threshold: count(h.success_threshold),
            readiness_path: h.readiness_path.clone(),
            metrics_path: h.metrics_path.clone(),
            port: u16::try_from(spec.port).unwrap_or(8080),
            grpc: h.grpc.as_ref().map(|g| g.service.clone()),
        }
    }
}

impl From<&MicroServiceSpec> for FailoverPolicy {
    fn from(spec: &MicroServiceSpec) -> Self {
        let f = &spec.failover;
        Self {
            fallback: f.fallback.clone(),
            mode: match f.mode {
                FailoverMode::Enforce => Mode::Enforce,
                FailoverMode::Observe => Mode::Observe,
            },
            min_healthy: count(f.min_healthy),
            max_error_rate: f.max_error_rate.filter(|r| r.is_finite()),
            error_rate_window: seconds(f.error_rate_window_seconds.max(1)),
            recover_after: seconds(f.recover_after_seconds),
            max_flaps: count(f.max_flaps),
            flap_window: seconds(f.flap_window_seconds.max(1)),
            scrape_metrics: f.scrape_metrics,
            max_ejection_percent: percent(f.max_ejection_percent),
            panic_threshold_percent: percent(f.panic_threshold_percent),
            sticky: match f.sticky_connections {
                StickyConnections::Report => StickyAction::Report,
                StickyConnections::Restart => StickyAction::Restart,
            },
            hold_on_fallback: f.hold_on_fallback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_engine_defaults() {
        // The API defaults and the engine defaults describe the same behaviour.
        let spec = MicroServiceSpec::with_image("flotilla/users:0.1.0");
        assert_eq!(ProbePolicy::from(&spec), ProbePolicy::default());
        assert_eq!(FailoverPolicy::from(&spec), FailoverPolicy::default());
    }

    #[test]
    fn values_are_carried_over() {
        // Every failover field reaches the engine.
        let mut spec = MicroServiceSpec::with_image("x");
        spec.port = 9000;
        spec.health.period_millis = 200;
        spec.failover.fallback = Some("b".into());
        spec.failover.mode = FailoverMode::Observe;
        spec.failover.max_error_rate = Some(0.2);
        spec.failover.recover_after_seconds = 3;
        spec.failover.sticky_connections = StickyConnections::Restart;
        spec.failover.hold_on_fallback = true;
        let p = ProbePolicy::from(&spec);
        assert_eq!((p.port, p.period), (9000, Duration::from_millis(200)));
        let f = FailoverPolicy::from(&spec);
        assert_eq!(f.mode, Mode::Observe);
        assert_eq!(f.fallback.as_deref(), Some("b"));
        assert_eq!(f.max_error_rate, Some(0.2));
        assert_eq!(f.recover_after, Duration::from_secs(3));
        assert_eq!(f.sticky, StickyAction::Restart);
        assert!(f.hold_on_fallback);
    }
}
