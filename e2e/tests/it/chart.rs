//! Checks of the operator chart: `helm lint --strict`, rendered manifests validated against the
//! Kubernetes OpenAPI schemas (and MicroServices against the CRD schema), `values.schema.json`
//! rejecting typos, the chart's CRD kept identical to the generated one, and the chart's behaviour
//! per value. The samples chart is checked in `chart_samples`, the rendered chart on a
//! cluster in `chart_kubesim`.
//!
//! Each check needs `helm` and the validation venv; when they are missing the check fails and
//! says to run `e2e/install-tools.sh`.

use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context, Result};
use flotilla_e2e::chart::{self, find_kind as find, kind_of, name_of, operator_deployment};
use flotilla_e2e::tools;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use serde_json::Value;

const RELEASE: &str = "flotilla";
const NAMESPACE: &str = "flotilla-system";

/// Every optional feature of the operator chart switched on.
const ALL_FEATURES: &[&str] = &[
    "replicaCount=2",
    "podDisruptionBudget.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.apiServerCidrs={192.0.2.10/32}",
    "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.labels.release=prometheus",
    "metrics.podMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "grafana.dashboard.enabled=true",
    "metrics.service.annotations.example\\.com/scrape=yes",
    "operator.watchNamespace=apps",
    "serviceAccount.annotations.example\\.com/owner=platform",
    "podAnnotations.example\\.com/team=platform",
    "podLabels.tier=control",
    "extraEnv[0].name=EXTRA",
    "extraEnv[0].value=on",
    "imagePullSecrets[0].name=regcred",
    "nodeSelector.kubernetes\\.io/os=linux",
    "tolerations[0].key=dedicated",
    "tolerations[0].operator=Exists",
    "tolerations[0].effect=NoSchedule",
    "priorityClassName=system-cluster-critical",
    "operator.configRollouts.enabled=true",
    "notifications.webhook.existingSecret=flotilla-webhook",
    "notifications.webhook.reasons={FailedOver,RolledBack}",
];

fn render(chart_name: &str, sets: &[&str]) -> Result<Vec<Value>> {
    chart::render_docs(chart_name, RELEASE, NAMESPACE, sets)
}

fn render_and_validate(chart_name: &str, sets: &[&str]) -> Result<Vec<Value>> {
    chart::render_and_validate(chart_name, RELEASE, NAMESPACE, sets)
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| kind_of(d).to_owned()).collect()
}

fn operator_args(deployment: &Deployment) -> Result<Vec<String>> {
    Ok(chart::first_container(deployment)?
        .args
        .clone()
        .unwrap_or_default())
}

fn helm_fails_with(sets: &[&str]) -> Result<String> {
    let helm = tools::find("helm")?;
    let output = tools::run(
        &helm,
        chart::template_args("flotilla", RELEASE, NAMESPACE, sets),
        None,
    )?;
    ensure!(
        !output.status.success(),
        "helm template succeeded with {sets:?}"
    );
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn operator_chart_passes_strict_lint() -> Result<()> {
    // `helm lint --strict` fails on warnings too (deprecated APIs, template errors, bad metadata).
    let helm = tools::find("helm")?;
    let dir = chart::chart_dir("flotilla");
    tools::run_ok(
        &helm,
        ["lint".as_ref(), "--strict".as_ref(), dir.as_os_str()],
        None,
    )?;
    let sets = ALL_FEATURES.join(",");
    tools::run_ok(
        &helm,
        [
            "lint".as_ref(),
            "--strict".as_ref(),
            dir.as_os_str(),
            "--set".as_ref(),
            sets.as_ref(),
        ],
        None,
    )?;
    Ok(())
}

#[test]
fn default_render_is_valid_kubernetes() -> Result<()> {
    // The default install renders only valid objects, and none of the optional ones.
    let docs = render_and_validate("flotilla", &[])?;
    let kinds = kinds(&docs);
    for expected in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
    ] {
        ensure!(kinds.contains(expected), "default render lacks {expected}");
    }
    for optional in ["PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"] {
        ensure!(!kinds.contains(optional), "{optional} is on by default");
    }
    Ok(())
}

#[test]
fn all_features_render_is_valid_kubernetes() -> Result<()> {
    // With every optional feature on, each optional object appears and is valid.
    let docs = render_and_validate("flotilla", ALL_FEATURES)?;
    let kinds = kinds(&docs);
    for expected in ["PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"] {
        ensure!(
            kinds.contains(expected),
            "all-features render lacks {expected}"
        );
    }
    // watchNamespace narrows the ClusterRole's binding to that namespace.
    ensure!(
        !kinds.contains("ClusterRoleBinding"),
        "watchNamespace still binds cluster-wide"
    );
    let bound_in_apps = docs.iter().any(|d| {
        kind_of(d) == "RoleBinding"
            && d.pointer("/metadata/namespace").and_then(Value::as_str) == Some("apps")
            && d.pointer("/roleRef/kind").and_then(Value::as_str) == Some("ClusterRole")
    });
    ensure!(
        bound_in_apps,
        "no RoleBinding of the ClusterRole in the watched namespace"
    );
    let args = operator_args(&operator_deployment(&docs)?)?;
    ensure!(
        args.windows(2)
            .any(|w| w[0] == "--watch-namespace" && w[1] == "apps"),
        "{args:?}"
    );

    // The ServiceMonitor scrapes the metrics Service's named port, and selects that Service.
    let monitor = find(&docs, "ServiceMonitor")?;
    let service = find(&docs, "Service")?;
    ensure!(
        monitor.pointer("/spec/endpoints/0/port") == service.pointer("/spec/ports/0/name"),
        "ServiceMonitor port does not name the Service port"
    );
    let selector = monitor
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .context("ServiceMonitor has no selector")?;
    for (key, value) in selector {
        ensure!(
            service.pointer(&format!("/metadata/labels/{}", key.replace('/', "~1"))) == Some(value),
            "Service lacks label {key}={value}"
        );
    }
    Ok(())
}

#[test]
fn misspelled_top_level_key_is_rejected() -> Result<()> {
    // values.schema.json forbids unknown keys, so a typo fails the install and names the key.
    let stderr = helm_fails_with(&["replicaCont=2"])?;
    ensure!(stderr.contains("replicaCont"), "{stderr}");
    Ok(())
}

#[test]
fn misspelled_nested_key_is_rejected() -> Result<()> {
    // additionalProperties: false holds at every level, not just the top.
    let stderr = helm_fails_with(&["operator.leaderElection.enable=true"])?;
    ensure!(stderr.contains("enable"), "{stderr}");
    let stderr = helm_fails_with(&["metrics.serviceMonitor.enbled=true"])?;
    ensure!(stderr.contains("enbled"), "{stderr}");
    Ok(())
}

#[test]
fn wrong_value_type_is_rejected() -> Result<()> {
    // The schema checks types and enums too, not only key names.
    let stderr = helm_fails_with(&["operator.logFormat=yaml"])?;
    ensure!(stderr.contains("logFormat"), "{stderr}");
    let stderr = helm_fails_with(&["operator.concurrency=0"])?;
    ensure!(stderr.contains("concurrency"), "{stderr}");
    Ok(())
}

#[test]
fn chart_crd_is_identical_to_generated_crd() -> Result<()> {
    // Helm installs the chart's crds/ copy; it must be exactly what `flotilla-operator crd` made.
    let generated = std::fs::read_to_string(chart::generated_crd_path())
        .context("reading crds/microservices.flotilla.rs.yaml")?;
    let copy = std::fs::read_to_string(chart::chart_crd_path())
        .context("reading charts/flotilla/crds/microservices.flotilla.rs.yaml")?;
    ensure!(
        generated == copy,
        "charts/flotilla/crds/ is stale: copy crds/microservices.flotilla.rs.yaml over it"
    );
    Ok(())
}

#[test]
fn validator_rejects_an_unknown_field() -> Result<()> {
    // The validation pipeline itself can fail: a Deployment with a misspelled field is an error.
    let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  replicas: 1\n  replicass: 2\n  selector:\n    matchLabels: {a: b}\n  template:\n    metadata:\n      labels: {a: b}\n    spec:\n      containers:\n      - name: c\n        image: i:1\n";
    let report = chart::kubernetes_validate(yaml)?;
    ensure!(
        report.errors.iter().any(|e| e.contains("replicass")),
        "{report:?}"
    );
    Ok(())
}

#[test]
fn deployment_is_pinned_hardened_and_probed() -> Result<()> {
    // The operator runs a pinned image, non-root on a read-only root FS, probed on its endpoints.
    let docs = render("flotilla", &[])?;
    let deployment = operator_deployment(&docs)?;
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("no pod spec")?;
    let container = pod.containers.first().context("no container")?;
    ensure!(
        container.image.as_deref() == Some("flotilla/operator:0.1.0"),
        "image {:?} is not the chart appVersion",
        container.image
    );

    let pod_sc = pod
        .security_context
        .as_ref()
        .context("no pod securityContext")?;
    ensure!(pod_sc.run_as_non_root == Some(true));
    ensure!(pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) == Some("RuntimeDefault"));
    let sc = container
        .security_context
        .as_ref()
        .context("no container securityContext")?;
    ensure!(sc.allow_privilege_escalation == Some(false));
    ensure!(sc.read_only_root_filesystem == Some(true));
    ensure!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()) == Some(vec!["ALL".to_owned()]));

    let port_of = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        probe
            .and_then(|p| p.http_get.as_ref())
            .map(|h| (h.path.clone().unwrap_or_default(), h.port.clone()))
    };
    let metrics =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".to_owned());
    ensure!(
        port_of(container.liveness_probe.as_ref()) == Some(("/healthz".into(), metrics.clone()))
    );
    ensure!(port_of(container.readiness_probe.as_ref()) == Some(("/readyz".into(), metrics)));
    ensure!(container
        .resources
        .as_ref()
        .is_some_and(|r| r.requests.is_some() && r.limits.is_some()));
    ensure!(pod.termination_grace_period_seconds == Some(30));

    let args = operator_args(&deployment)?;
    let expected: Vec<String> = [
        "run",
        "--metrics-addr",
        "0.0.0.0:8080",
        "--log-format",
        "json",
        "--concurrency",
        "16",
        "--leader-election",
        "--leader-election-namespace",
        NAMESPACE,
        "--verdict-key-file",
        "/etc/flotilla/verdict-key/current.pem",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    ensure!(args == expected, "args {args:?}");
    // The verdict key comes from the generated Secret, read-only and only into the operator.
    let secret = docs
        .iter()
        .find(|d| kind_of(d) == "Secret" && name_of(d).ends_with("-verdict-key"))
        .context("no verdict key Secret")?;
    let typed: Secret = serde_json::from_value(secret.clone())?;
    let pem = typed
        .data
        .as_ref()
        .and_then(|d| d.get("current.pem"))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .context("no current.pem")?;
    // RFC 8410's PKCS#8 Ed25519 prefix, base64: the one key form the operator loads.
    ensure!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI"),
        "current.pem is no PKCS#8 Ed25519 key: {pem}"
    );
    let mounted = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "verdict-key")
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone());
    ensure!(mounted.as_deref() == Some(name_of(secret)), "{mounted:?}");
    Ok(())
}

#[test]
fn policy_values_become_operator_flags() -> Result<()> {
    // `operator.policy` lists reach the operator as its comma-separated `--allowed-*` flags,
    // empty lists (the default) pass no flag, and a prefix that would admit more than it says
    // is refused by the values schema.
    let docs = render(
        "flotilla",
        &[
            "operator.policy.allowedImagePrefixes={registry.example.com/shop/,flotilla/users:}",
            "operator.policy.allowedServiceAccounts={default,shop-app}",
            "operator.policy.allowedServiceTypes={ClusterIP,NodePort}",
        ],
    )?;
    let args = operator_args(&operator_deployment(&docs)?)?;
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    for (flag, want) in [
        (
            "--allowed-image-prefixes",
            "registry.example.com/shop/,flotilla/users:",
        ),
        ("--allowed-service-accounts", "default,shop-app"),
        ("--allowed-service-types", "ClusterIP,NodePort"),
    ] {
        ensure!(
            value_of(flag).as_deref() == Some(want),
            "{flag} is {:?} in {args:?}",
            value_of(flag)
        );
    }

    let default_args = operator_args(&operator_deployment(&render("flotilla", &[])?)?)?;
    ensure!(
        !default_args.iter().any(|a| a.starts_with("--allowed-")),
        "{default_args:?}"
    );

    let stderr =
        helm_fails_with(&["operator.policy.allowedImagePrefixes={docker.io/library/nginx}"])?;
    ensure!(stderr.contains("allowedImagePrefixes"), "{stderr}");
    let stderr = helm_fails_with(&["operator.policy.allowedServiceTypes={ExternalName}"])?;
    ensure!(stderr.contains("allowedServiceTypes"), "{stderr}");
    Ok(())
}

#[test]
fn latest_tag_is_refused_and_tag_is_honoured() -> Result<()> {
    // `latest` never reaches a cluster; an explicit tag replaces the appVersion default.
    let stderr = helm_fails_with(&["image.tag=latest"])?;
    ensure!(stderr.contains("tag"), "{stderr}");
    let docs = render(
        "flotilla",
        &["image.repository=example.com/op", "image.tag=1.2.3"],
    )?;
    let deployment = operator_deployment(&docs)?;
    let image = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.image);
    ensure!(
        image.as_deref() == Some("example.com/op:1.2.3"),
        "{image:?}"
    );
    Ok(())
}

#[test]
fn leader_election_off_drops_lease_access_and_overlap() -> Result<()> {
    // Without leader election: no Lease and no Lease permissions, no election flags, and no rollout overlap.
    let docs = render("flotilla", &["operator.leaderElection.enabled=false"])?;
    let grants_leases =
        |d: &&Value| kind_of(d) == "Role" && d.to_string().contains("coordination.k8s.io");
    ensure!(
        !docs
            .iter()
            .any(|d| grants_leases(&d) || kind_of(d) == "Lease"),
        "a Lease or Lease access is rendered without leader election"
    );
    let deployment = operator_deployment(&docs)?;
    let args = operator_args(&deployment)?;
    ensure!(
        !args.iter().any(|a| a.starts_with("--leader-election")),
        "{args:?}"
    );
    let strategy = deployment
        .spec
        .and_then(|s| s.strategy)
        .and_then(|s| s.type_);
    ensure!(strategy.as_deref() == Some("Recreate"), "{strategy:?}");
    Ok(())
}

#[test]
fn replicas_need_leader_election() -> Result<()> {
    // Two replicas without a leader would both reconcile; the chart refuses that combination.
    let stderr = helm_fails_with(&["replicaCount=2", "operator.leaderElection.enabled=false"])?;
    ensure!(stderr.contains("leaderElection"), "{stderr}");
    Ok(())
}

#[test]
fn pdb_needs_more_than_one_replica() -> Result<()> {
    // A PDB over a single pod would block node drains, so it is rendered only with replicas > 1.
    let one = render("flotilla", &["podDisruptionBudget.enabled=true"])?;
    ensure!(!kinds(&one).contains("PodDisruptionBudget"));
    let two = render(
        "flotilla",
        &["podDisruptionBudget.enabled=true", "replicaCount=2"],
    )?;
    ensure!(kinds(&two).contains("PodDisruptionBudget"));
    Ok(())
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let owned = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(owned(groups)),
        resources: Some(owned(resources)),
        verbs: owned(verbs),
        ..PolicyRule::default()
    }
}

#[test]
fn rbac_grants_exactly_what_the_operator_uses() -> Result<()> {
    // Least privilege: the ClusterRole holds these rules and nothing else (pods/eviction only
    // with sticky restarts on); Lease access is limited to the operator's own Lease, which the
    // chart creates.
    let docs = render("flotilla", &[])?;
    let role: ClusterRole = serde_json::from_value(find(&docs, "ClusterRole")?.clone())?;
    let children = [
        "get", "list", "watch", "create", "patch", "update", "delete",
    ];
    let expected = vec![
        rule(
            &["flotilla.rs"],
            &["microservices"],
            &["get", "list", "watch", "patch"],
        ),
        rule(
            &["flotilla.rs"],
            &["microservices/status"],
            &["get", "patch", "update"],
        ),
        rule(&["flotilla.rs"], &["microservices/finalizers"], &["update"]),
        rule(&["apps"], &["deployments"], &children),
        rule(&[""], &["services", "configmaps"], &children),
        rule(
            &["apps"],
            &["controllerrevisions"],
            &["get", "list", "create", "patch", "delete"],
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], &children),
        rule(&[""], &["pods"], &["get", "list", "watch", "patch"]),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
        rule(&[""], &["events"], &["create", "patch"]),
    ];
    ensure!(role.rules.as_ref() == Some(&expected), "{:#?}", role.rules);
    // Sticky restarts evict pods (so PodDisruptionBudgets apply) only when the admin allows
    // them; the operator never deletes pods itself.
    let docs = render("flotilla", &["operator.stickyRestarts.enabled=true"])?;
    let role: ClusterRole = serde_json::from_value(find(&docs, "ClusterRole")?.clone())?;
    let mut with_eviction = expected.clone();
    with_eviction.insert(8, rule(&[""], &["pods/eviction"], &["create"]));
    ensure!(
        role.rules.as_ref() == Some(&with_eviction),
        "{:#?}",
        role.rules
    );

    let lease = docs
        .iter()
        .find(|d| kind_of(d) == "Role" && name_of(d).ends_with("-leader-election"))
        .context("no leader-election Role")?;
    let lease: Role = serde_json::from_value(lease.clone())?;
    let mut named = rule(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "update", "patch"],
    );
    named.resource_names = Some(vec!["flotilla-operator".to_owned()]);
    ensure!(
        lease.rules.as_ref() == Some(&vec![named]),
        "{:#?}",
        lease.rules
    );
    // The chart creates that Lease, free, so the operator needs no create and uninstall
    // removes it.
    let created = find(&docs, "Lease")?;
    ensure!(
        name_of(created) == "flotilla-operator" && created.get("spec").is_none(),
        "{created:#}"
    );
    Ok(())
}

#[test]
fn config_rollouts_grant_secrets_with_the_flag() -> Result<()> {
    // Reading Secrets is granted only with operator.configRollouts.enabled, together with the
    // flag that uses it; by default the ClusterRole names no secrets and the flag is absent.
    let secrets = rule(&[""], &["secrets"], &["get", "list", "watch"]);
    for (sets, on) in [
        (&[][..], false),
        (&["operator.configRollouts.enabled=true"][..], true),
    ] {
        let docs = render_and_validate("flotilla", sets)?;
        let role: ClusterRole = serde_json::from_value(find(&docs, "ClusterRole")?.clone())?;
        let rules = role.rules.unwrap_or_default();
        let names_secrets = rules
            .iter()
            .any(|r| r.resources.iter().flatten().any(|res| res == "secrets"));
        ensure!(names_secrets == on, "{sets:?}: {rules:#?}");
        ensure!(rules.contains(&secrets) == on, "{sets:?}: {rules:#?}");
        let args = operator_args(&operator_deployment(&docs)?)?;
        let flag = args.iter().any(|a| a == "--rollout-on-config-change");
        ensure!(flag == on, "{sets:?}: {args:?}");
    }
    Ok(())
}

#[test]
fn every_object_has_standard_labels() -> Result<()> {
    // Every object carries the app.kubernetes.io/* and helm.sh/chart labels.
    for sets in [&[][..], ALL_FEATURES] {
        for doc in render("flotilla", sets)? {
            for key in [
                "helm.sh/chart",
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/part-of",
                "app.kubernetes.io/component",
            ] {
                let pointer = format!("/metadata/labels/{}", key.replace('/', "~1"));
                if doc.pointer(&pointer).is_none() {
                    bail!("{}/{} lacks label {key}", kind_of(&doc), name_of(&doc));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn crd_schema_check_rejects_a_bad_microservice() -> Result<()> {
    // The CRD-schema check can fail: a MicroService without an image, with a string replica
    // count and an unknown service type is reported.
    let crd = std::fs::read_to_string(chart::generated_crd_path())?;
    let schema = chart::crd_schema(&crd)?;
    let bad = serde_json::json!({
        "apiVersion": "flotilla.rs/v1alpha1",
        "kind": "MicroService",
        "metadata": {"name": "bad"},
        "spec": {"replicas": "three", "service": {"type": "Mesh"}}
    });
    let violations = chart::jsonschema_violations(&schema, &[bad])?;
    let text = violations.join("\n");
    ensure!(text.contains("image"), "{text}");
    ensure!(text.contains("replicas"), "{text}");
    ensure!(text.contains("Mesh"), "{text}");
    Ok(())
}

#[test]
fn tracing_points_the_operator_at_a_collector() -> Result<()> {
    // operator.tracing.otlpEndpoint sets the standard OTEL_* variables on the operator; unset,
    // none is there (no exporter runs); a protocol the operator does not speak is refused.
    let otel_env = |sets: &[&str]| -> Result<Vec<(String, String)>> {
        let docs = render_and_validate("flotilla", sets)?;
        let deployment = operator_deployment(&docs)?;
        Ok(chart::first_container(&deployment)?
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.name.starts_with("OTEL_"))
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect())
    };
    ensure!(otel_env(&[])?.is_empty(), "{:?}", otel_env(&[])?);
    let set = otel_env(&[
        "operator.tracing.otlpEndpoint=http://otel-collector.observability:4317",
        "operator.tracing.protocol=grpc",
        "operator.tracing.serviceName=flotilla-prod",
    ])?;
    let want = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel-collector.observability:4317",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SERVICE_NAME", "flotilla-prod"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    ensure!(set == want, "{set:?}");
    let err = helm_fails_with(&[
        "operator.tracing.otlpEndpoint=http://c:4317",
        "operator.tracing.protocol=thrift",
    ])?;
    ensure!(err.contains("protocol"), "{err}");
    Ok(())
}
