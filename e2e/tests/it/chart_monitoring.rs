//! The chart's monitoring: the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`, a firing and a quiet case for every alert); the PodMonitor,
//! PrometheusRule and Grafana dashboard ConfigMap are rendered only when asked for, and then hold
//! exactly the chart's files and select what the operator labels. The same files are proven on a
//! real Prometheus in `observability`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use flotilla_crds::labels;
use flotilla_e2e::chart::{self, find_kind, kind_of, name_of};
use flotilla_e2e::{monitoring, tools};
use serde_json::{json, Value};

const RELEASE: &str = "flotilla";
const NAMESPACE: &str = "flotilla-system";

fn render(sets: &[&str]) -> Result<Vec<Value>> {
    chart::render_and_validate("flotilla", RELEASE, NAMESPACE, sets)
}

/// Runs `promtool args...` in the rule files' directory; its combined output, and whether it
/// succeeded.
fn promtool(args: &[&str]) -> Result<(bool, String)> {
    let promtool = tools::find("promtool")?;
    let dir = monitoring::rules_path()
        .parent()
        .context("the rule file has no directory")?
        .to_owned();
    let out = std::process::Command::new(&promtool)
        .args(args)
        .current_dir(&dir)
        .output()
        .with_context(|| format!("running {}", promtool.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[test]
fn alert_rules_pass_promtool_check() -> Result<()> {
    // The rule file is valid as Prometheus loads it, with every alert counted.
    let path = monitoring::rules_path();
    let (ok, out) = promtool(&["check", "rules", &path.to_string_lossy()])?;
    ensure!(ok, "promtool check rules failed:\n{out}");
    let count = monitoring::alerts(&monitoring::rules()?)?.len();
    ensure!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "{out}"
    );
    Ok(())
}

#[test]
fn promtool_check_rejects_a_broken_rule() -> Result<()> {
    // The check can fail: an expression that does not parse is reported.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "groups:\n  - name: g\n    rules:\n      - alert: Broken\n        expr: sum(rate(x[5m])\n",
    )?;
    let (ok, out) = promtool(&["check", "rules", &file.to_string_lossy()])?;
    ensure!(!ok && out.contains("Broken"), "{out}");
    Ok(())
}

#[test]
fn alert_unit_tests_pass_and_cover_every_alert() -> Result<()> {
    // `promtool test rules` passes, and every alert has a case where it fires and one where it
    // is expected quiet.
    let path = monitoring::rules_test_path();
    let (ok, out) = promtool(&["test", "rules", &path.to_string_lossy()])?;
    ensure!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");

    let tests: Value = serde_norway::from_str(&std::fs::read_to_string(&path)?)?;
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests
        .get("tests")
        .and_then(Value::as_array)
        .context("no tests")?
        .iter()
        .flat_map(|t| t.get("alert_rule_test").and_then(Value::as_array))
        .flatten()
    {
        let name = case
            .get("alertname")
            .and_then(Value::as_str)
            .context("a case without alertname")?
            .to_owned();
        let expected = case.get("exp_alerts").and_then(Value::as_array);
        if expected.is_some_and(|e| !e.is_empty()) {
            firing.insert(name);
        } else {
            quiet.insert(name);
        }
    }
    for alert in monitoring::alerts(&monitoring::rules()?)? {
        ensure!(
            firing.contains(&alert.name),
            "no firing case for {}",
            alert.name
        );
        ensure!(
            quiet.contains(&alert.name),
            "no quiet case for {}",
            alert.name
        );
    }
    Ok(())
}

#[test]
fn monitoring_objects_are_off_by_default() -> Result<()> {
    // A default install needs no Prometheus Operator CRDs and adds no dashboard.
    let docs = chart::render_docs("flotilla", RELEASE, NAMESPACE, &[])?;
    for kind in ["PodMonitor", "PrometheusRule", "ConfigMap"] {
        ensure!(
            docs.iter().all(|d| kind_of(d) != kind),
            "{kind} rendered by default"
        );
    }
    Ok(())
}

#[test]
fn prometheus_rule_holds_the_rule_file() -> Result<()> {
    // The PrometheusRule's spec is the rule file's groups, unchanged, with the chart's labels
    // and the extra ones; promtool accepts the groups as rendered.
    let docs = render(&[
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=prometheus",
    ])?;
    let rule = find_kind(&docs, "PrometheusRule")?;
    ensure!(
        rule.get("apiVersion") == Some(&json!("monitoring.coreos.com/v1")),
        "{rule:#}"
    );
    ensure!(rule.pointer("/metadata/namespace") == Some(&json!(NAMESPACE)));
    ensure!(rule.pointer("/metadata/labels/release") == Some(&json!("prometheus")));
    ensure!(
        rule.pointer("/metadata/labels/app.kubernetes.io~1part-of") == Some(&json!("flotilla"))
    );
    let spec = rule.get("spec").context("no spec")?;
    ensure!(
        *spec == monitoring::rules()?,
        "the PrometheusRule's spec differs from files/prometheus-rules.yaml"
    );

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, serde_norway::to_string(spec)?)?;
    let (ok, out) = promtool(&["check", "rules", &file.to_string_lossy()])?;
    ensure!(ok, "promtool rejects the rendered groups:\n{out}");
    Ok(())
}

#[test]
fn dashboard_config_map_holds_the_dashboard_for_the_sidecar() -> Result<()> {
    // The ConfigMap carries the sidecar's label (`grafana_dashboard: "1"` unless told otherwise)
    // and the annotations asked for, lands in the chosen namespace (the release's by default),
    // and its one key is the dashboard file as it is.
    let docs = render(&[
        "grafana.dashboard.enabled=true",
        "grafana.dashboard.annotations.grafana_folder=Flotilla",
        "grafana.dashboard.namespace=monitoring",
        "grafana.dashboard.label=dashboards",
        "grafana.dashboard.labelValue=flotilla",
    ])?;
    let cm = find_kind(&docs, "ConfigMap")?;
    ensure!(name_of(cm) == "flotilla-dashboard", "{}", name_of(cm));
    ensure!(cm.pointer("/metadata/namespace") == Some(&json!("monitoring")));
    ensure!(cm.pointer("/metadata/labels/dashboards") == Some(&json!("flotilla")));
    ensure!(cm.pointer("/metadata/annotations/grafana_folder") == Some(&json!("Flotilla")));
    let data = cm
        .get("data")
        .and_then(Value::as_object)
        .context("no data")?;
    ensure!(data.len() == 1, "{:?}", data.keys().collect::<Vec<_>>());
    let text = data
        .get("flotilla.json")
        .and_then(Value::as_str)
        .context("no flotilla.json")?;
    let rendered: Value = serde_json::from_str(text).context("the dashboard is not JSON")?;
    ensure!(
        rendered == monitoring::dashboard()?,
        "the dashboard differs"
    );

    let default_ns = render(&["grafana.dashboard.enabled=true"])?;
    let cm = find_kind(&default_ns, "ConfigMap")?;
    ensure!(cm.pointer("/metadata/namespace") == Some(&json!(NAMESPACE)));
    ensure!(cm.pointer("/metadata/labels/grafana_dashboard") == Some(&json!("1")));
    Ok(())
}

#[test]
fn dashboard_is_well_formed() -> Result<()> {
    // Panel ids are unique, every query uses only the dashboard's own variables (or Grafana's
    // interval ones), and every panel reads the data source variable.
    let dash = monitoring::dashboard()?;
    let queries = monitoring::panel_queries(&dash)?;
    ensure!(queries.len() >= 20, "only {} queries", queries.len());
    let mut values: BTreeMap<String, String> = monitoring::label_values_variables(&dash)?
        .into_iter()
        .map(|v| (v.name, "x".to_owned()))
        .collect();
    values.insert("__rate_interval".into(), "5m".into());
    for q in &queries {
        monitoring::substitute(&q.expr, &values)
            .with_context(|| format!("panel {:?} {}", q.panel, q.ref_id))?;
    }
    let mut ids = BTreeSet::new();
    let panels = dash
        .get("panels")
        .and_then(Value::as_array)
        .context("no panels")?;
    for panel in panels {
        let id = panel.get("id").and_then(Value::as_i64).context("no id")?;
        ensure!(ids.insert(id), "panel id {id} twice");
        if panel.get("type").and_then(Value::as_str) != Some("row") {
            ensure!(
                panel.pointer("/datasource/uid") == Some(&json!("${datasource}")),
                "panel {id} does not use the data source variable"
            );
        }
    }
    Ok(())
}

#[test]
fn pod_monitor_selects_the_pods_the_operator_labels() -> Result<()> {
    // The PodMonitor selects pods by the label the operator puts on every MicroService pod and
    // names the job after the MicroService; it watches every namespace, or only the watched one.
    let docs = render(&[
        "metrics.podMonitor.enabled=true",
        "metrics.podMonitor.labels.release=prometheus",
        "metrics.podMonitor.port=web",
        "metrics.podMonitor.path=/stats",
    ])?;
    let pm = find_kind(&docs, "PodMonitor")?;
    ensure!(pm.get("apiVersion") == Some(&json!("monitoring.coreos.com/v1")));
    ensure!(name_of(pm) == "flotilla-microservices");
    ensure!(pm.pointer("/metadata/labels/release") == Some(&json!("prometheus")));
    ensure!(
        pm.pointer("/spec/selector/matchLabels")
            == Some(&json!({(labels::MANAGED_BY): labels::MANAGED_BY_VALUE})),
        "{pm:#}"
    );
    ensure!(pm.pointer("/spec/jobLabel") == Some(&json!(labels::INSTANCE)));
    ensure!(pm.pointer("/spec/namespaceSelector") == Some(&json!({"any": true})));
    let endpoint = pm
        .pointer("/spec/podMetricsEndpoints/0")
        .context("no endpoint")?;
    ensure!(
        *endpoint
            == json!({"port": "web", "path": "/stats", "interval": "30s", "scrapeTimeout": "10s"}),
        "{endpoint:#}"
    );

    let narrowed = render(&[
        "metrics.podMonitor.enabled=true",
        "operator.watchNamespace=apps",
    ])?;
    let pm = find_kind(&narrowed, "PodMonitor")?;
    ensure!(pm.pointer("/spec/namespaceSelector") == Some(&json!({"matchNames": ["apps"]})));
    Ok(())
}

#[test]
fn service_monitor_keeps_the_microservices_namespace_label() -> Result<()> {
    // The operator's per-service gauge carries the MicroService's namespace; the ServiceMonitor
    // honours it rather than renaming it under the operator's namespace.
    let docs = render(&["metrics.serviceMonitor.enabled=true"])?;
    let sm = find_kind(&docs, "ServiceMonitor")?;
    ensure!(
        sm.pointer("/spec/endpoints/0/honorLabels") == Some(&json!(true)),
        "{sm:#}"
    );
    Ok(())
}
