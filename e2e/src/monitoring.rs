//! The chart's monitoring files as the tests read them: the Prometheus rule file, its promtool
//! unit tests and the Grafana dashboard, all under `charts/flotilla/files/`. The chart checks
//! compare the rendered PrometheusRule and dashboard ConfigMap with them; the observability test
//! loads the same rule file into a real Prometheus and runs every dashboard query there, after
//! putting in the values Grafana would give the dashboard's variables.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::chart;

/// The alerting rules, rendered into the PrometheusRule and loaded by Prometheus as they are.
pub fn rules_path() -> PathBuf {
    chart::chart_dir("flotilla")
        .join("files")
        .join("prometheus-rules.yaml")
}

/// The promtool unit tests of [`rules_path`].
pub fn rules_test_path() -> PathBuf {
    chart::chart_dir("flotilla")
        .join("files")
        .join("prometheus-rules.test.yaml")
}

/// The Grafana dashboard, rendered into the dashboard ConfigMap as it is.
pub fn dashboard_path() -> PathBuf {
    chart::chart_dir("flotilla")
        .join("files")
        .join("grafana-dashboard.json")
}

/// The rule file, parsed.
pub fn rules() -> Result<Value> {
    let path = rules_path();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The dashboard, parsed.
pub fn dashboard() -> Result<Value> {
    let path = dashboard_path();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// One alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// `alert`.
    pub name: String,
    /// `expr`.
    pub expr: String,
    /// `for`, when the rule waits before firing.
    pub for_: Option<String>,
}

/// Every alerting rule of a rule file, in file order.
pub fn alerts(rules: &Value) -> Result<Vec<Alert>> {
    let groups = rules
        .get("groups")
        .and_then(Value::as_array)
        .context("the rule file has no groups")?;
    let mut out = Vec::new();
    for rule in groups.iter().flat_map(|g| {
        g.get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }) {
        let Some(name) = rule.get("alert").and_then(Value::as_str) else {
            continue;
        };
        let expr = rule
            .get("expr")
            .and_then(Value::as_str)
            .with_context(|| format!("alert {name} has no expr"))?;
        out.push(Alert {
            name: name.to_owned(),
            expr: expr.to_owned(),
            for_: rule.get("for").and_then(Value::as_str).map(str::to_owned),
        });
    }
    Ok(out)
}

/// One query of a dashboard panel.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelQuery {
    /// The panel's title.
    pub panel: String,
    /// The target's `refId`.
    pub ref_id: String,
    /// The PromQL expression, with the dashboard's variables still in it.
    pub expr: String,
}

/// Every query of every panel, rows' panels included, in dashboard order.
pub fn panel_queries(dashboard: &Value) -> Result<Vec<PanelQuery>> {
    fn walk(panels: &[Value], out: &mut Vec<PanelQuery>) -> Result<()> {
        for panel in panels {
            let title = panel
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or_default();
            for target in panel
                .get("targets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let expr = target
                    .get("expr")
                    .and_then(Value::as_str)
                    .with_context(|| format!("a target of panel {title:?} has no expr"))?;
                out.push(PanelQuery {
                    panel: title.to_owned(),
                    ref_id: target
                        .get("refId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    expr: expr.to_owned(),
                });
            }
            if let Some(inner) = panel.get("panels").and_then(Value::as_array) {
                walk(inner, out)?;
            }
        }
        Ok(())
    }
    let panels = dashboard
        .get("panels")
        .and_then(Value::as_array)
        .context("the dashboard has no panels")?;
    let mut out = Vec::new();
    walk(panels, &mut out)?;
    Ok(out)
}

/// A query variable of the dashboard: `label_values(<metric>, <label>)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelValuesVariable {
    /// The variable's name (`$name` in queries).
    pub name: String,
    /// The series selector whose label values are the variable's options.
    pub metric: String,
    /// The label.
    pub label: String,
}

/// The dashboard's query variables. Only `label_values(metric, label)` queries are supported (the
/// data source variable is left to Grafana); any other query is an error, so a variable the tests
/// cannot evaluate is not silently passed over.
pub fn label_values_variables(dashboard: &Value) -> Result<Vec<LabelValuesVariable>> {
    let list = dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .context("the dashboard has no templating list")?;
    let mut out = Vec::new();
    for var in list {
        let name = var
            .get("name")
            .and_then(Value::as_str)
            .context("a variable has no name")?;
        match var.get("type").and_then(Value::as_str) {
            Some("datasource") => continue,
            Some("query") => {}
            other => bail!("variable {name} has type {other:?}, which the tests do not evaluate"),
        }
        let query = var
            .get("definition")
            .and_then(Value::as_str)
            .with_context(|| format!("variable {name} has no definition"))?;
        let args = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|args| args.rsplit_once(','))
            .with_context(|| format!("variable {name}: {query:?} is not label_values(m, l)"))?;
        out.push(LabelValuesVariable {
            name: name.to_owned(),
            metric: args.0.trim().to_owned(),
            label: args.1.trim().to_owned(),
        });
    }
    Ok(out)
}

/// A multi-value variable's values as Grafana puts them into a Prometheus query: each
/// regex-escaped, joined into one alternation `(a|b)`.
pub fn regex_alternation(values: &[String]) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .flat_map(|c| {
                    let special = "\\.+*?()|[]{}^$".contains(c);
                    special.then_some('\\').into_iter().chain([c])
                })
                .collect()
        })
        .collect();
    format!("({})", escaped.join("|"))
}

/// `expr` with each `$name` and `${name}` replaced by `values[name]`; a variable without a value
/// is an error.
pub fn substitute(expr: &str, values: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .with_context(|| format!("unclosed ${{ in {expr:?}"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let value = values
            .get(name)
            .with_context(|| format!("no value for ${name} in {expr:?}"))?;
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    ensure!(!out.contains('$'), "a variable is left in {out:?}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_are_replaced_and_unknown_ones_refused() {
        // Both spellings are replaced; a variable without a value is an error, not left in.
        let values = BTreeMap::from([
            ("job".to_owned(), "(a|b)".to_owned()),
            ("__rate_interval".to_owned(), "5m".to_owned()),
        ]);
        let out = substitute(r#"rate(x{job=~"$job"}[${__rate_interval}])"#, &values);
        assert_eq!(out.ok().as_deref(), Some(r#"rate(x{job=~"(a|b)"}[5m])"#));
        assert!(substitute("x{ns=~\"$namespace\"}", &values).is_err());
    }

    #[test]
    fn alternation_escapes_regex_characters() {
        // A value is matched literally, as Grafana escapes it.
        let values = ["flotilla-metrics".to_owned(), "a.b".to_owned()];
        assert_eq!(regex_alternation(&values), r"(flotilla-metrics|a\.b)");
    }

    #[test]
    fn queries_of_rows_and_panels_are_all_found() {
        // Panels nested in a collapsed row count as much as top-level ones.
        let dash = json!({"panels": [
            {"title": "A", "targets": [{"refId": "A", "expr": "up"}]},
            {"type": "row", "title": "R", "panels": [
                {"title": "B", "targets": [{"refId": "A", "expr": "x"}, {"refId": "B", "expr": "y"}]}
            ]}
        ]});
        let exprs: Vec<String> = panel_queries(&dash)
            .unwrap_or_default()
            .into_iter()
            .map(|q| q.expr)
            .collect();
        assert_eq!(exprs, ["up", "x", "y"]);
    }

    #[test]
    fn only_label_values_variables_are_accepted() {
        // A variable the tests cannot evaluate fails instead of being skipped.
        let ok = json!({"templating": {"list": [
            {"type": "datasource", "name": "datasource"},
            {"type": "query", "name": "ns", "definition": "label_values(up{a=\"b,c\"}, namespace)"}
        ]}});
        let vars = label_values_variables(&ok).unwrap_or_default();
        assert_eq!(vars.len(), 1);
        assert_eq!(vars[0].metric, "up{a=\"b,c\"}");
        assert_eq!(vars[0].label, "namespace");
        let custom = json!({"templating": {"list": [{"type": "custom", "name": "x"}]}});
        assert!(label_values_variables(&custom).is_err());
    }

    #[test]
    fn alerts_are_read_with_their_for() {
        // Recording rules are not alerts; `for` is optional.
        let rules = json!({"groups": [{"name": "g", "rules": [
            {"record": "r", "expr": "1"},
            {"alert": "A", "expr": "up == 0", "for": "5m"},
            {"alert": "B", "expr": "x > 0"}
        ]}]});
        let alerts = alerts(&rules).unwrap_or_default();
        let got: Vec<(&str, Option<&str>)> = alerts
            .iter()
            .map(|a| (a.name.as_str(), a.for_.as_deref()))
            .collect();
        assert_eq!(got, [("A", Some("5m")), ("B", None)]);
    }
}
