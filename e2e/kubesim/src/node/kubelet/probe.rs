//! Probe bookkeeping as the kubelet keeps it: parameters with the API defaults, what to check, and
//! the consecutive-success/failure state machine that turns results into Ready, Started or "kill".
//! Pure; the checks themselves run in `probe_run`.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Which probe: they differ in their initial result and what a failure means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Starts failing; drives the container's `ready`.
    Readiness,
    /// Starts succeeding; failure restarts the container.
    Liveness,
    /// Starts failing; success marks the container started, failure restarts it.
    Startup,
}

/// Timing and thresholds, defaulted as the API server defaults them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeParams {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl ProbeParams {
    pub fn from_probe(p: &Probe) -> Self {
        let secs = |v: Option<i32>, d: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(d).max(0)).unwrap_or(0))
        };
        let count = |v: Option<i32>, d: i32| u32::try_from(v.unwrap_or(d).max(1)).unwrap_or(1);
        Self {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(p.success_threshold, 1),
            failure_threshold: count(p.failure_threshold, 3),
        }
    }
}

/// What a probe checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeCheck {
    /// HTTP GET; success is a status in 200..400.
    Http {
        addr: (Ipv4Addr, u16),
        path: String,
        host_header: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connect.
    Tcp { addr: (Ipv4Addr, u16) },
    /// `grpc.health.v1.Health/Check` over plaintext HTTP/2 for `service` (empty: the whole
    /// server); success is `SERVING`, as the kubelet's native gRPC probe.
    Grpc {
        addr: (Ipv4Addr, u16),
        service: String,
    },
    /// A probe kubesim cannot run (exec, HTTPS); it is treated as passing and reported.
    Unsupported(&'static str),
    /// A probe that cannot be run as written (a named port the container does not declare);
    /// it always fails, with this message.
    Invalid(String),
}

fn resolve_port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// The check a probe spec describes, against the pod's IP.
pub fn check_for(probe: &Probe, container: &Container, pod_ip: Ipv4Addr) -> ProbeCheck {
    let unknown =
        |port: &IntOrString| ProbeCheck::Invalid(format!("unknown port {port:?} in probe"));
    if let Some(h) = &probe.http_get {
        if h.scheme.as_deref() == Some("HTTPS") {
            return ProbeCheck::Unsupported("HTTPS");
        }
        let Some(port) = resolve_port(container, &h.port) else {
            return unknown(&h.port);
        };
        let host = h
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(pod_ip);
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        let host_header = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map_or_else(|| format!("{host}:{port}"), |(_, v)| v.clone());
        let path = h
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        return ProbeCheck::Http {
            addr: (host, port),
            path,
            host_header,
            headers: headers
                .into_iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
                .collect(),
        };
    }
    if let Some(t) = &probe.tcp_socket {
        let Some(port) = resolve_port(container, &t.port) else {
            return unknown(&t.port);
        };
        let host = t
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(pod_ip);
        return ProbeCheck::Tcp { addr: (host, port) };
    }
    if let Some(g) = &probe.grpc {
        // The API types the port as a plain number (no named ports for gRPC probes).
        let Ok(port) = u16::try_from(g.port) else {
            return ProbeCheck::Invalid(format!("invalid gRPC probe port {}", g.port));
        };
        return ProbeCheck::Grpc {
            addr: (pod_ip, port),
            service: g.service.clone().unwrap_or_default(),
        };
    }
    ProbeCheck::Unsupported("exec")
}

/// Consecutive results → the probe's current verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeState {
    pub kind: ProbeKind,
    pub params: ProbeParams,
    successes: u32,
    failures: u32,
    /// The current verdict (readiness: ready; liveness: alive; startup: started).
    pub passing: bool,
}

impl ProbeState {
    pub fn new(kind: ProbeKind, params: ProbeParams) -> Self {
        Self {
            kind,
            params,
            successes: 0,
            failures: 0,
            passing: kind == ProbeKind::Liveness,
        }
    }

    /// Records one result; returns `Some(new verdict)` when the verdict flips.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.passing && self.successes >= self.params.success_threshold {
                self.passing = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            let fails_now = self.failures >= self.params.failure_threshold;
            // A startup probe that never passed fails the container on reaching the threshold.
            if fails_now && (self.passing || self.kind == ProbeKind::Startup) {
                self.passing = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(success: u32, failure: u32) -> ProbeParams {
        ProbeParams {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn readiness_needs_consecutive_successes_and_failures() {
        // Ready only after successThreshold passes in a row, unready after failureThreshold fails.
        let mut s = ProbeState::new(ProbeKind::Readiness, params(2, 3));
        assert!(!s.passing);
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(true), Some(true));
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), Some(false));
    }

    #[test]
    fn liveness_starts_alive_and_fails_at_the_threshold() {
        // A live container is killed only after failureThreshold consecutive failures.
        let mut s = ProbeState::new(ProbeKind::Liveness, params(1, 2));
        assert!(s.passing);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(true), None);
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), Some(false));
    }

    #[test]
    fn startup_failure_before_success_fails_the_container() {
        // A startup probe that never passes reports failure at the threshold.
        let mut s = ProbeState::new(ProbeKind::Startup, params(1, 2));
        assert_eq!(s.observe(false), None);
        assert_eq!(s.observe(false), Some(false));
        let mut s = ProbeState::new(ProbeKind::Startup, params(1, 2));
        assert_eq!(s.observe(true), Some(true));
    }

    #[test]
    fn probe_specs_become_checks_against_the_pod_ip() {
        // Named ports resolve through the container; an unknown one is a failing check, gRPC
        // probes keep their service name, and exec probes are reported as unsupported rather
        // than silently dropped.
        use k8s_openapi::api::core::v1::{
            ContainerPort, ExecAction, HTTPGetAction, TCPSocketAction,
        };
        let c = Container {
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let ip = Ipv4Addr::new(127, 2, 0, 9);
        let http = Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            check_for(&http, &c, ip),
            ProbeCheck::Http {
                addr: (ip, 8080),
                path: "/readyz".into(),
                host_header: "127.2.0.9:8080".into(),
                headers: vec![]
            }
        );
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("grpc".into()),
                host: None,
            }),
            ..Default::default()
        };
        assert!(matches!(check_for(&tcp, &c, ip), ProbeCheck::Invalid(_)));
        let exec = Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        };
        assert_eq!(check_for(&exec, &c, ip), ProbeCheck::Unsupported("exec"));
        let grpc = Probe {
            grpc: Some(k8s_openapi::api::core::v1::GRPCAction {
                port: 9090,
                service: Some("orders".into()),
            }),
            ..Default::default()
        };
        assert_eq!(
            check_for(&grpc, &c, ip),
            ProbeCheck::Grpc {
                addr: (ip, 9090),
                service: "orders".into()
            }
        );
    }

    #[test]
    fn defaults_follow_the_api() {
        // Unset fields take the API server's defaults: period 10s, timeout 1s, thresholds 1/3.
        let p = ProbeParams::from_probe(&Probe::default());
        assert_eq!(
            p,
            ProbeParams {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
    }
}
