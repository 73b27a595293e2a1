//! A real Prometheus server for the tests: Debian's `prometheus` binary (from
//! `e2e/install-tools.sh`) as a child process on a free loopback port, with a generated
//! configuration that loads rule files as they are, scrapes static targets and the targets a
//! test writes to a file (file-based service discovery standing in for the Prometheus
//! Operator's ServiceMonitor and PodMonitor, which need a real cluster), and the HTTP API calls
//! the tests make: instant queries, series, alerts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use flotilla_testkit::http;
use flotilla_testkit::operator::free_port;
use flotilla_testkit::process::{self, Process};
use serde_json::{json, Value};

use crate::tools;

/// One statically configured scrape job.
#[derive(Debug, Clone)]
pub struct StaticJob {
    /// `job_name`, the `job` label of its series.
    pub job: String,
    /// `host:port` scraped at `/metrics`.
    pub target: String,
    /// Labels added to every series of the target.
    pub labels: BTreeMap<String, String>,
    /// Keep the target's own labels where they clash with these (`honor_labels`), as the chart's
    /// ServiceMonitor does for the operator.
    pub honor_labels: bool,
}

/// One group of targets for file-based discovery: addresses and the labels they share
/// (`job` among them, which then names the job as a PodMonitor's `jobLabel` does).
#[derive(Debug, Clone, PartialEq)]
pub struct TargetGroup {
    /// `host:port` of each target.
    pub targets: Vec<String>,
    /// Labels of the group's series.
    pub labels: BTreeMap<String, String>,
}

/// What the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Scrape and rule evaluation interval, e.g. `1s`.
    pub interval: String,
    /// Rule files loaded as they are.
    pub rule_files: Vec<PathBuf>,
    /// Static scrape jobs.
    pub static_jobs: Vec<StaticJob>,
}

/// An alert as `/api/v1/alerts` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    /// `alertname`.
    pub name: String,
    /// `pending` (the expression holds, `for` not yet over) or `firing`.
    pub state: String,
}

/// One sample of an instant query.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// Its value (NaN when Prometheus says so).
    pub value: f64,
}

/// A running Prometheus; dropping it stops the server (and prints its log).
pub struct Prometheus {
    url: String,
    targets_file: PathBuf,
    _process: Process,
    _dir: tempfile::TempDir,
}

/// The configuration file's content.
fn config_yaml(config: &Config, targets_file: &Path) -> Result<String> {
    let mut jobs: Vec<Value> = config
        .static_jobs
        .iter()
        .map(|j| {
            json!({
                "job_name": j.job,
                "honor_labels": j.honor_labels,
                "static_configs": [{"targets": [j.target], "labels": j.labels}],
            })
        })
        .collect();
    jobs.push(json!({
        "job_name": "file-targets",
        "file_sd_configs": [{"files": [targets_file], "refresh_interval": config.interval}],
    }));
    let doc = json!({
        "global": {
            "scrape_interval": config.interval,
            "scrape_timeout": config.interval,
            "evaluation_interval": config.interval,
        },
        "rule_files": config.rule_files,
        "scrape_configs": jobs,
    });
    Ok(serde_norway::to_string(&doc)?)
}

impl Prometheus {
    /// Starts `prometheus` with `config` and waits until it answers `/-/ready`.
    pub async fn start(config: &Config) -> Result<Self> {
        let binary = tools::find("prometheus")?;
        let dir = tempfile::tempdir()?;
        let targets_file = dir.path().join("targets.json");
        std::fs::write(&targets_file, "[]")?;
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config_yaml(config, &targets_file)?)?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let url = format!("http://{addr}");
        let ready_url = format!("{url}/-/ready");
        let process = process::Builder::new("prometheus", &binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .ready(process::check(move |_| {
                let ready_url = ready_url.clone();
                async move { Ok(http::get(&ready_url).await?.status == 200) }
            }))
            .start()
            .await?;
        Ok(Self {
            url,
            targets_file,
            _process: process,
            _dir: dir,
        })
    }

    /// Replaces the file-discovered targets (written whole, then renamed into place, so
    /// Prometheus never reads half a file).
    pub fn set_file_targets(&self, groups: &[TargetGroup]) -> Result<()> {
        let doc: Vec<Value> = groups
            .iter()
            .map(|g| json!({"targets": g.targets, "labels": g.labels}))
            .collect();
        let partial = self.targets_file.with_extension("json.partial");
        std::fs::write(&partial, serde_json::to_vec(&doc)?)?;
        std::fs::rename(&partial, &self.targets_file).context("replacing the targets file")
    }

    /// `GET /api/v1/<path>` with `params`; the `data` of a successful answer.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect();
        let url = format!("{}/api/v1/{path}?{}", self.url, query.join("&"));
        let reply = http::get(&url).await?;
        let body = reply.json()?;
        ensure!(
            reply.status == 200 && body.get("status") == Some(&json!("success")),
            "{path} {params:?} answered {}: {}",
            reply.status,
            reply.body
        );
        body.get("data").cloned().context("an answer without data")
    }

    /// The instant vector `expr` evaluates to now. A scalar or string result is an error.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>> {
        let data = self.api("query", &[("query", expr)]).await?;
        let kind = data.get("resultType").and_then(Value::as_str);
        if kind != Some("vector") {
            bail!("{expr} gave a {kind:?}, not a vector");
        }
        let result = data
            .get("result")
            .and_then(Value::as_array)
            .context("no result")?;
        result.iter().map(sample).collect()
    }

    /// Values of `label` over the series matching `selector` (what Grafana's
    /// `label_values(selector, label)` lists), sorted and without repeats.
    pub async fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>> {
        let data = self.api("series", &[("match[]", selector)]).await?;
        let mut values: Vec<String> = data
            .as_array()
            .context("series is not a list")?
            .iter()
            .filter_map(|s| s.get(label).and_then(Value::as_str).map(str::to_owned))
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }

    /// The alerts now pending or firing.
    pub async fn alerts(&self) -> Result<Vec<ActiveAlert>> {
        let data = self.api("alerts", &[]).await?;
        let alerts = data
            .get("alerts")
            .and_then(Value::as_array)
            .context("no alerts list")?;
        alerts
            .iter()
            .map(|a| {
                Ok(ActiveAlert {
                    name: a
                        .pointer("/labels/alertname")
                        .and_then(Value::as_str)
                        .context("an alert without alertname")?
                        .to_owned(),
                    state: a
                        .get("state")
                        .and_then(Value::as_str)
                        .context("an alert without state")?
                        .to_owned(),
                })
            })
            .collect()
    }
}

/// `text` percent-encoded for a query string: every byte but the unreserved ones.
fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A sample of a query's result: `{"metric": {...}, "value": [time, "1.5"]}`.
fn sample(v: &Value) -> Result<Sample> {
    let labels = v
        .get("metric")
        .and_then(Value::as_object)
        .context("a sample without labels")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    let text = v
        .pointer("/value/1")
        .and_then(Value::as_str)
        .context("a sample without value")?;
    let value = text
        .parse::<f64>()
        .with_context(|| format!("sample value {text:?}"))?;
    Ok(Sample { labels, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_loads_rules_and_scrapes_both_kinds_of_target() -> Result<()> {
        // The static job keeps its labels and honour setting; file discovery reads the file.
        let config = Config {
            interval: "1s".into(),
            rule_files: vec![PathBuf::from("/rules.yaml")],
            static_jobs: vec![StaticJob {
                job: "op".into(),
                target: "127.0.0.1:1".into(),
                labels: BTreeMap::from([("namespace".to_owned(), "sys".to_owned())]),
                honor_labels: true,
            }],
        };
        let text = config_yaml(&config, Path::new("/t.json"))?;
        let doc: Value = serde_norway::from_str(&text)?;
        assert_eq!(doc["rule_files"], json!(["/rules.yaml"]));
        assert_eq!(doc["global"]["evaluation_interval"], json!("1s"));
        assert_eq!(doc["scrape_configs"][0]["honor_labels"], json!(true));
        assert_eq!(
            doc["scrape_configs"][0]["static_configs"][0]["labels"]["namespace"],
            json!("sys")
        );
        assert_eq!(
            doc["scrape_configs"][1]["file_sd_configs"][0]["files"],
            json!(["/t.json"])
        );
        Ok(())
    }

    #[test]
    fn query_strings_are_encoded() {
        // PromQL is full of characters a URL gives meaning to.
        assert_eq!(
            form_encode(r#"sum(x{a=~"b|c"}[5m]) > 0"#),
            "sum%28x%7Ba%3D~%22b%7Cc%22%7D%5B5m%5D%29%20%3E%200"
        );
        assert_eq!(form_encode("match[]"), "match%5B%5D");
    }

    #[test]
    fn samples_parse_and_nan_is_kept() -> Result<()> {
        // Prometheus sends values as strings; NaN is a value, for the caller to judge.
        let s = sample(&json!({"metric": {"job": "a"}, "value": [1.0, "2.5"]}))?;
        assert_eq!(s.value, 2.5);
        assert_eq!(s.labels.get("job").map(String::as_str), Some("a"));
        let nan = sample(&json!({"metric": {}, "value": [1.0, "NaN"]}))?;
        assert!(nan.value.is_nan());
        Ok(())
    }
}
