//! Chart checks: `helm lint --strict`, rendered manifests validated against the Kubernetes
//! OpenAPI schemas (and MicroServices against the CRD schema), `values.schema.json` rejecting
//! typos, the chart's CRD kept identical to the generated one, and the chart's behaviour per value.
//!
//! Each check needs `helm` and the validation venv; when they are missing the check fails and
//! says to run `e2e/install-tools.sh`.

use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context, Result};
use flotilla_e2e::chart::{self, kind_of, name_of};
use flotilla_e2e::tools;
use k8s_openapi::api::apps::v1::Deployment;
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
];

/// Custom resources `kubernetes-validate` has no schema for, and how each is checked instead.
const CUSTOM_KINDS: &[&str] = &["MicroService", "ServiceMonitor"];

fn render(chart_name: &str, sets: &[&str]) -> Result<Vec<Value>> {
    chart::split_documents(&chart::render(chart_name, RELEASE, NAMESPACE, sets)?)
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| kind_of(d) == kind)
        .with_context(|| format!("no {kind} rendered"))
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| kind_of(d).to_owned()).collect()
}

fn operator_deployment(docs: &[Value]) -> Result<Deployment> {
    serde_json::from_value(find(docs, "Deployment")?.clone()).context("Deployment does not parse")
}

fn operator_args(deployment: &Deployment) -> Result<Vec<String>> {
    let container = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .context("Deployment has no container")?;
    Ok(container.args.clone().unwrap_or_default())
}

/// Renders `chart_name` with `sets` and checks every object: built-in kinds against the
/// Kubernetes schemas (strict), MicroServices against the CRD schema. Returns the objects.
fn render_and_validate(chart_name: &str, sets: &[&str]) -> Result<Vec<Value>> {
    let yaml = chart::render(chart_name, RELEASE, NAMESPACE, sets)?;
    let docs = chart::split_documents(&yaml)?;
    ensure!(!docs.is_empty(), "{chart_name} rendered nothing");

    let report = chart::kubernetes_validate(&yaml)?;
    ensure!(
        report.errors.is_empty(),
        "kubernetes-validate rejected {chart_name}:\n{}",
        report.errors.join("\n")
    );
    let custom: Vec<&Value> = docs
        .iter()
        .filter(|d| CUSTOM_KINDS.contains(&kind_of(d)))
        .collect();
    ensure!(
        report.passed.len() + custom.len() == docs.len(),
        "{} of {} objects passed and {} are custom resources; passed: {:?}",
        report.passed.len(),
        docs.len(),
        custom.len(),
        report.passed
    );
    for kind in &report.no_schema {
        ensure!(
            CUSTOM_KINDS.contains(&kind.as_str()),
            "no schema for built-in-looking kind {kind}"
        );
    }

    let microservices: Vec<Value> = docs
        .iter()
        .filter(|d| kind_of(d) == "MicroService")
        .cloned()
        .collect();
    if !microservices.is_empty() {
        let crd = std::fs::read_to_string(chart::generated_crd_path())
            .context("reading the generated CRD")?;
        let schema = chart::crd_schema(&crd)?;
        let violations = chart::jsonschema_violations(&schema, &microservices)?;
        ensure!(
            violations.is_empty(),
            "MicroServices violate the CRD schema:\n{}",
            violations.join("\n")
        );
    }
    Ok(docs)
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
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    ensure!(args == expected, "args {args:?}");
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
    // Without leader election: no Lease permissions, no election flags, and no rollout overlap.
    let docs = render("flotilla", &["operator.leaderElection.enabled=false"])?;
    let grants_leases =
        |d: &&Value| kind_of(d) == "Role" && d.to_string().contains("coordination.k8s.io");
    ensure!(
        !docs.iter().any(|d| grants_leases(&d)),
        "Lease access is rendered without leader election"
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
    // Least privilege: the ClusterRole holds these rules and nothing else; Lease access is
    // limited to the operator's own Lease (create cannot be limited by name).
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
        rule(&["autoscaling"], &["horizontalpodautoscalers"], &children),
        rule(&[""], &["pods"], &["get", "list", "watch", "patch"]),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
        rule(&[""], &["events"], &["create", "patch"]),
    ];
    ensure!(role.rules.as_ref() == Some(&expected), "{:#?}", role.rules);

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
    let expected = vec![
        rule(&["coordination.k8s.io"], &["leases"], &["create"]),
        named,
    ];
    ensure!(
        lease.rules.as_ref() == Some(&expected),
        "{:#?}",
        lease.rules
    );
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

/// Dotted paths of the leaves of `values` (an empty map or list is a leaf).
fn leaf_keys(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_keys(child, &path, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn readme_values_tables_list_every_value() -> Result<()> {
    // Each chart README's values table names exactly the keys its values.yaml has.
    for chart_name in ["flotilla", "flotilla-samples"] {
        let dir = chart::chart_dir(chart_name);
        let values: Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join("values.yaml"))?)?;
        let mut in_values = BTreeSet::new();
        leaf_keys(&values, "", &mut in_values);
        let readme = std::fs::read_to_string(dir.join("README.md"))?;
        let values_section = readme
            .split("\n## ")
            .find(|section| section.starts_with("Values"))
            .with_context(|| format!("{chart_name} README has no Values section"))?;
        let in_readme: BTreeSet<String> = values_section
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(key, _)| key.to_owned())
            .collect();
        let undocumented: Vec<_> = in_values.difference(&in_readme).collect();
        let unknown: Vec<_> = in_readme.difference(&in_values).collect();
        ensure!(
            undocumented.is_empty() && unknown.is_empty(),
            "{chart_name} README values table is out of sync: missing {undocumented:?}, \
             not in values.yaml {unknown:?}"
        );
    }
    Ok(())
}

#[test]
fn samples_chart_passes_strict_lint() -> Result<()> {
    // The samples chart is held to the same lint bar as the operator chart.
    let helm = tools::find("helm")?;
    let dir = chart::chart_dir("flotilla-samples");
    tools::run_ok(
        &helm,
        ["lint".as_ref(), "--strict".as_ref(), dir.as_os_str()],
        None,
    )?;
    Ok(())
}

#[test]
fn samples_render_valid_microservices() -> Result<()> {
    // The samples render valid objects, and their MicroServices satisfy the CRD schema, with
    // defaults and with every option on.
    let all = [
        "auth.autoscaling.enabled=true",
        "auth.jwtSecret=fixed-for-test-0123456789abcdef0123",
        "auth.adminToken=admin",
        "users.adminToken=admin",
        "auth.config.LOG_LEVEL=debug",
        "users.config.LOG_LEVEL=debug",
    ];
    for sets in [&[][..], &all[..]] {
        let docs = render_and_validate("flotilla-samples", sets)?;
        let names: BTreeSet<&str> = docs
            .iter()
            .filter(|d| kind_of(d) == "MicroService")
            .map(name_of)
            .collect();
        ensure!(names == BTreeSet::from(["auth", "users"]), "{names:?}");
    }
    let docs = render("flotilla-samples", &all)?;
    let auth = docs
        .iter()
        .find(|d| kind_of(d) == "MicroService" && name_of(d) == "auth")
        .context("no auth MicroService")?;
    let auth: flotilla_crds::MicroService = serde_json::from_value(auth.clone())?;
    ensure!(auth.spec.autoscaling.is_some_and(|a| a.max_replicas == 5));
    ensure!(auth.spec.dependencies == Some(vec!["users".to_owned()]));
    Ok(())
}

#[test]
fn samples_schema_rejects_a_typo() -> Result<()> {
    // A misspelled samples value fails and is named.
    let helm = tools::find("helm")?;
    let output = tools::run(
        &helm,
        chart::template_args("flotilla-samples", RELEASE, NAMESPACE, &["auth.replica=3"]),
        None,
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("replica"),
        "{stderr}"
    );
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

/// Container args and literal environment variables of the operator.
type OperatorCommand = (Vec<String>, Vec<(String, String)>);

/// The operator container's args and literal env from a rendered Deployment, with the metrics
/// address moved to `metrics_addr` (a loopback port of this machine instead of the pod's
/// `0.0.0.0:8080`).
fn local_operator_command(deployment: &Deployment, metrics_addr: &str) -> Result<OperatorCommand> {
    let container = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .context("Deployment has no container")?;
    let mut args = container.args.clone().unwrap_or_default();
    let at = args
        .iter()
        .position(|a| a == "--metrics-addr")
        .context("chart passes no --metrics-addr")?;
    let value = args
        .get_mut(at + 1)
        .context("--metrics-addr has no value")?;
    *value = metrics_addr.to_owned();
    let envs = container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.value.map(|v| (e.name, v)))
        .chain([("POD_NAMESPACE".to_owned(), NAMESPACE.to_owned())])
        .collect();
    Ok((args, envs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_chart_applies_to_kubesim_and_operator_reconciles() -> Result<()> {
    // The rendered chart (CRD included) is accepted by `kubectl apply --server-side`, and the
    // operator started with the chart's own container arguments reconciles a MicroService to
    // Ready on that cluster.
    use flotilla_e2e::local::{free_port, LocalCluster, OperatorProcess};
    use flotilla_e2e::{msvc, wait};
    use kube::api::{Patch, PatchParams};
    use kube::Api;

    let cluster = LocalCluster::start_bare().await?;
    let kubeconfig = cluster.kubeconfig_path().to_string_lossy().into_owned();
    let kubectl = tools::find("kubectl")?;
    let helm = tools::find("helm")?;

    // replicaCount=0: the Deployment is applied, but the operator runs below as a local
    // process rather than as a pod of the simulated node.
    let mut args = chart::template_args("flotilla", RELEASE, NAMESPACE, &["replicaCount=0"]);
    args.extend(["--include-crds".to_owned(), "--skip-tests".to_owned()]);
    let rendered = tools::run_ok(&helm, &args, None)?;
    // What `helm install --create-namespace` does first.
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}}))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(cluster.client())
        .create(&Default::default(), &ns)
        .await?;
    let applied = tools::run_ok(
        &kubectl,
        [
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "--server-side",
            "--field-manager",
            "helm",
            "-f",
            "-",
        ],
        Some(rendered.as_bytes()),
    )?;
    let docs = chart::split_documents(&rendered)?;
    for doc in &docs {
        let expected = format!("/{} serverside-applied", name_of(doc));
        ensure!(
            applied.contains(&expected),
            "{} {} was not applied:\n{applied}",
            kind_of(doc),
            name_of(doc)
        );
    }
    let crd_established = tools::run_ok(
        &kubectl,
        [
            "--kubeconfig",
            &kubeconfig,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/microservices.flotilla.rs",
        ],
        None,
    );
    crd_established?;

    let deployment = operator_deployment(&docs)?;
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let (op_args, op_env) = local_operator_command(&deployment, &metrics_addr)?;
    let log = cluster.state_dir().join("chart-operator.log");
    let operator = OperatorProcess::start(
        cluster.kubeconfig_path(),
        &op_args,
        &op_env,
        &metrics_addr,
        log.clone(),
    )
    .await?;

    let client = cluster.client();
    let namespace = flotilla_e2e::namespace::TestNamespace::create(
        &client,
        "rendered_chart_applies_to_kubesim_and_operator_reconciles",
    )
    .await?;
    let api: Api<flotilla_crds::MicroService> = Api::namespaced(client.clone(), &namespace.name);
    let sample: flotilla_crds::MicroService = serde_json::from_value(serde_json::json!({
        "apiVersion": flotilla_crds::API_VERSION,
        "kind": flotilla_crds::KIND,
        "metadata": {"name": "users", "namespace": namespace.name},
        "spec": {"image": "flotilla/users:0.1.0", "replicas": 1}
    }))?;
    api.patch(
        "users",
        &PatchParams::apply("flotilla-e2e").force(),
        &Patch::Apply(&sample),
    )
    .await?;
    let ready = wait::for_object(&api, "users", msvc::READY_TIMEOUT, msvc::is_ready).await;
    if ready.is_err() {
        eprintln!(
            "{}",
            flotilla_e2e::dump::namespace_report(&client, &namespace.name).await
        );
        eprintln!("operator log:\n{}", flotilla_e2e::local::tail(&log, 80));
        eprintln!("{}", cluster.diagnostics());
    }
    let ready = ready?;
    ensure!(
        ready.status.as_ref().and_then(|s| s.ready_replicas) == Some(1),
        "{:?}",
        ready.status
    );
    // The chart turns leader election on in the release namespace: the operator holds the Lease.
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), NAMESPACE)
            .get("flotilla-operator")
            .await
            .context("the operator's Lease")?;
    ensure!(
        lease.spec.and_then(|s| s.holder_identity).is_some(),
        "the Lease has no holder"
    );
    // SIGTERM: the operator drains and exits within the chart's grace period, releasing the
    // Lease so a standby can take over at once.
    let grace = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.termination_grace_period_seconds)
        .context("no terminationGracePeriodSeconds")?;
    let status = operator
        .terminate(std::time::Duration::from_secs(u64::try_from(grace)?))
        .await?;
    ensure!(status.success(), "operator exited with {status}");
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(cluster.client(), NAMESPACE)
            .get("flotilla-operator")
            .await?;
    ensure!(
        lease.spec.and_then(|s| s.holder_identity).is_none(),
        "the Lease was not released on SIGTERM"
    );
    cluster.shutdown().await;
    Ok(())
}

#[test]
fn samples_chart_mirrors_services_deploy() -> Result<()> {
    // The samples chart installs the same MicroServices as services/deploy/ (apart from the
    // replica count, resources and autoscaling, which are chart values), and the same Secret names
    // and keys.
    let docs = render("flotilla-samples", &[])?;
    for name in ["users", "auth"] {
        let sample = flotilla_e2e::msvc::sample(name)?;
        let rendered = docs
            .iter()
            .find(|d| kind_of(d) == "MicroService" && name_of(d) == name)
            .with_context(|| format!("no {name} MicroService rendered"))?;
        let rendered: flotilla_crds::MicroService = serde_json::from_value(rendered.clone())?;
        let normalize = |spec: &flotilla_crds::MicroServiceSpec| {
            let mut spec = spec.clone();
            spec.replicas = 0;
            spec.resources = None;
            spec.autoscaling = None;
            spec
        };
        ensure!(
            normalize(&rendered.spec) == normalize(&sample.msvc.spec),
            "{name}: chart spec {:#?}\ndiffers from services/deploy {:#?}",
            rendered.spec,
            sample.msvc.spec
        );
        for secret in &sample.secrets {
            let secret_name = secret.metadata.name.clone().unwrap_or_default();
            let chart_secret = docs
                .iter()
                .find(|d| kind_of(d) == "Secret" && name_of(d) == secret_name)
                .with_context(|| format!("chart renders no Secret {secret_name}"))?;
            let chart_keys: BTreeSet<String> = chart_secret
                .get("data")
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let sample_keys: BTreeSet<String> = secret
                .string_data
                .iter()
                .flat_map(|m| m.keys().cloned())
                .chain(secret.data.iter().flat_map(|m| m.keys().cloned()))
                .collect();
            ensure!(
                chart_keys == sample_keys,
                "{secret_name}: {chart_keys:?} vs {sample_keys:?}"
            );
        }
    }
    Ok(())
}
