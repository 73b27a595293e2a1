//! Unit tests of the Deployment builder.

use flotilla_crds::{AutoscalingSpec, MicroServiceSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::*;
use crate::build::testutil::validated;

fn pod(d: &Deployment) -> PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_else(|| panic!("pod spec expected"))
}

fn container(d: &Deployment) -> Container {
    pod(d)
        .containers
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("container expected"))
}

fn env_value(c: &Container, name: &str) -> Option<EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name).cloned()
}

fn template_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn template_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

/// The Deployment carries the standard labels, a controller owner reference, the image, the
/// named port and the replica count.
#[test]
fn deployment_basics() {
    let mut spec = MicroServiceSpec::with_image("flotilla/users:0.1.0");
    spec.replicas = 3;
    spec.port = 9000;
    spec.port_name = "web".into();
    let d = build_deployment(&validated("users", spec), &OperatorInputs::default());
    let labels = d.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("users")
    );
    assert_eq!(
        labels.get("app.kubernetes.io/instance").map(String::as_str),
        Some("users")
    );
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("flotilla")
    );
    assert_eq!(
        labels.get("app.kubernetes.io/part-of").map(String::as_str),
        Some("shop")
    );
    let owner = d.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.len(), 1);
    assert_eq!(owner[0].kind, "MicroService");
    assert_eq!(owner[0].name, "users");
    assert_eq!(owner[0].uid, "uid-1");
    assert_eq!(owner[0].controller, Some(true));
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some("flotilla/users:0.1.0"));
    let ports = c.ports.unwrap_or_default();
    assert_eq!(ports[0].container_port, 9000);
    assert_eq!(ports[0].name.as_deref(), Some("web"));
}

/// Probes use the health paths on the named port, with period/timeout rounded up to seconds;
/// liveness keeps successThreshold 1, is at least as patient as MIN_LIVENESS_FAILURES and
/// MIN_LIVENESS_PERIOD_SECONDS, and waits behind a startup probe on the same path.
#[test]
fn probes_follow_health() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.health.period_millis = 1500;
    spec.health.timeout_millis = 300;
    spec.health.initial_delay_seconds = 4;
    let c = container(&build_deployment(
        &validated("users", spec),
        &OperatorInputs::default(),
    ));
    let r = c.readiness_probe.unwrap_or_default();
    let get = r.http_get.clone().unwrap_or_default();
    assert_eq!(get.path.as_deref(), Some("/readyz"));
    assert_eq!(get.port, IntOrString::String("http".into()));
    assert_eq!(r.period_seconds, Some(2));
    assert_eq!(r.timeout_seconds, Some(1));
    assert_eq!(r.failure_threshold, Some(2));
    assert_eq!(r.success_threshold, Some(2));
    assert_eq!(r.initial_delay_seconds, Some(4));
    let l = c.liveness_probe.unwrap_or_default();
    assert_eq!(l.http_get.and_then(|g| g.path).as_deref(), Some("/healthz"));
    assert_eq!(l.success_threshold, Some(1));
    assert_eq!(l.failure_threshold, Some(3));
    assert_eq!(l.period_seconds, Some(5));
    let st = c.startup_probe.unwrap_or_default();
    assert_eq!(
        st.http_get.and_then(|g| g.path).as_deref(),
        Some("/healthz")
    );
    assert_eq!(st.period_seconds, Some(1));
    assert_eq!(st.failure_threshold, Some(120));
    assert_eq!(st.success_threshold, Some(1));
}

/// A gRPC service gets a native grpc readiness probe for its health service name, and TCP
/// liveness and startup probes that never restart pods over a dependency outage.
#[test]
fn grpc_health_uses_native_grpc_readiness() {
    let mut spec = MicroServiceSpec::with_image("flotilla/orders:0.1.0");
    spec.port = 9000;
    spec.health.grpc = Some(flotilla_crds::GrpcHealthSpec {
        service: "flotilla.orders.v1.Orders".into(),
    });
    let c = container(&build_deployment(
        &validated("orders", spec),
        &OperatorInputs::default(),
    ));
    let r = c.readiness_probe.unwrap_or_default();
    assert_eq!(r.http_get, None);
    let grpc = r.grpc.unwrap_or_default();
    assert_eq!(grpc.port, 9000);
    assert_eq!(grpc.service.as_deref(), Some("flotilla.orders.v1.Orders"));
    for p in [c.liveness_probe, c.startup_probe] {
        let p = p.unwrap_or_default();
        assert_eq!((p.http_get, p.grpc), (None, None));
        assert_eq!(
            p.tcp_socket.map(|t| t.port),
            Some(IntOrString::String("http".into()))
        );
    }
}

/// The downward API env, dependency URLs and config keys are injected; user env wins on a clash.
#[test]
fn env_is_injected_and_user_wins() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.dependencies = Some(vec!["users".into(), "billing-api".into()]);
    spec.config = Some(
        [
            ("LOG_LEVEL", "info"),
            ("app.yaml", "a: 1"),
            ("USERS_URL", "from-config"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    spec.env = Some(vec![EnvVar {
        name: "LOG_LEVEL".into(),
        value: Some("debug".into()),
        ..EnvVar::default()
    }]);
    let c = container(&build_deployment(
        &validated("auth", spec),
        &OperatorInputs::default(),
    ));
    let pod_ip = env_value(&c, "POD_IP")
        .and_then(|e| e.value_from)
        .and_then(|f| f.field_ref);
    assert_eq!(
        pod_ip.map(|f| f.field_path).as_deref(),
        Some("status.podIP")
    );
    assert!(env_value(&c, "POD_NAME").is_some());
    assert!(env_value(&c, "POD_NAMESPACE").is_some());
    assert_eq!(
        env_value(&c, "BILLING_API_URL")
            .and_then(|e| e.value)
            .as_deref(),
        Some("http://billing-api.shop.svc.cluster.local:80")
    );
    // Config beats the generated dependency URL of the same name.
    let users = env_value(&c, "USERS_URL")
        .and_then(|e| e.value_from)
        .and_then(|f| f.config_map_key_ref);
    assert_eq!(
        users.map(|r| (r.name, r.key)),
        Some(("auth-config".into(), "USERS_URL".into()))
    );
    // User env beats config.
    assert_eq!(
        env_value(&c, "LOG_LEVEL").and_then(|e| e.value).as_deref(),
        Some("debug")
    );
    // Keys that are not env names are not exposed as env.
    assert!(env_value(&c, "app.yaml").is_none());
    let names: Vec<_> = c.env.iter().flatten().map(|e| e.name.clone()).collect();
    let unique: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(
        names.len(),
        unique.len(),
        "no duplicate env names: {names:?}"
    );
}

/// A config change changes the pod-template hash annotation, and the mount appears only with a
/// mount path.
#[test]
fn config_hash_and_mount() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.config = Some([("A".to_string(), "1".to_string())].into());
    let a = build_deployment(&validated("auth", spec.clone()), &OperatorInputs::default());
    assert!(pod(&a).volumes.is_none());
    spec.config = Some([("A".to_string(), "2".to_string())].into());
    spec.config_mount_path = Some("/etc/auth".into());
    let b = build_deployment(&validated("auth", spec), &OperatorInputs::default());
    let ha = template_annotations(&a)
        .get(annotations::CONFIG_HASH)
        .cloned();
    let hb = template_annotations(&b)
        .get(annotations::CONFIG_HASH)
        .cloned();
    assert!(ha.is_some());
    assert_ne!(ha, hb);
    let vols = pod(&b).volumes.unwrap_or_default();
    assert_eq!(
        vols[0].config_map.as_ref().map(|c| c.name.as_str()),
        Some("auth-config")
    );
    let mounts = container(&b).volume_mounts.unwrap_or_default();
    assert_eq!(mounts[0].mount_path, "/etc/auth");
}

/// With autoscaling the Deployment leaves `replicas` unset so the HPA owns it.
#[test]
fn autoscaling_releases_replicas() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.autoscaling = Some(AutoscalingSpec {
        min_replicas: 1,
        max_replicas: 4,
        target_cpu_utilization_percentage: Some(70),
        target_memory_utilization_percentage: None,
        scale_down_stabilization_seconds: None,
    });
    let d = build_deployment(&validated("auth", spec), &OperatorInputs::default());
    assert_eq!(d.spec.and_then(|s| s.replicas), None);
}

/// With failover the pod template sets the membership label, and the selector never has it.
#[test]
fn failover_membership_label_only_on_template() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.failover.enabled = true;
    spec.failover.fallback = Some("auth-standby".into());
    let d = build_deployment(&validated("auth", spec), &OperatorInputs::default());
    assert_eq!(
        template_labels(&d)
            .get("serves.flotilla.rs/auth")
            .map(String::as_str),
        Some("true")
    );
    let sel = d
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    assert_eq!(sel, selector_labels("auth"));
    let plain = build_deployment(
        &validated("auth", MicroServiceSpec::with_image("x")),
        &OperatorInputs::default(),
    );
    assert!(!template_labels(&plain).contains_key("serves.flotilla.rs/auth"));
}

/// Pods run non-root without privilege escalation and with all capabilities dropped; the
/// pass-through fields reach the pod.
#[test]
fn security_and_pass_through() {
    let mut spec = MicroServiceSpec::with_image("x");
    spec.service_account_name = Some("auth-sa".into());
    spec.node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
    spec.pod_annotations = Some([("team".to_string(), "identity".to_string())].into());
    let d = build_deployment(&validated("auth", spec), &OperatorInputs::default());
    let p = pod(&d);
    assert_eq!(p.service_account_name.as_deref(), Some("auth-sa"));
    assert_eq!(
        p.node_selector
            .and_then(|n| n.get("disk").cloned())
            .as_deref(),
        Some("ssd")
    );
    assert_eq!(
        p.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let sc = container(&d).security_context.unwrap_or_default();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        template_annotations(&d).get("team").map(String::as_str),
        Some("identity")
    );
}

/// Every container gets the operator's verdict keys after the downward-API variables, so its
/// pods can check verdicts; without keys nothing is added.
#[test]
fn verdict_keys_follow_the_downward_api_variables() {
    let v = validated("auth", MicroServiceSpec::with_image("x"));
    let plain = build_deployment(&v, &OperatorInputs::default());
    let op = OperatorInputs {
        verdict_keys: Some("k1:AAAA".into()),
    };
    let with = build_deployment(&v, &op);
    let names: Vec<String> = container(&with)
        .env
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names[..4],
        [
            "POD_IP",
            "POD_NAME",
            "POD_NAMESPACE",
            "FLOTILLA_VERDICT_KEYS"
        ]
    );
    assert_eq!(
        env_value(&container(&with), "FLOTILLA_VERDICT_KEYS").and_then(|e| e.value),
        Some("k1:AAAA".to_string())
    );
    // Without keys nothing is added: the two differ by that one variable only.
    let mut without = with.clone();
    if let Some(c) = without
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.containers.first_mut())
    {
        c.env
            .get_or_insert_with(Vec::new)
            .retain(|e| e.name != "FLOTILLA_VERDICT_KEYS");
    }
    assert_eq!(without, plain);
}
