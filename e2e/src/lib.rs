//! The Flotilla end-to-end suite's library, on top of the shared harness (`flotilla-testkit`).
//!
//! - [`env`]: [`env::run_test`]: the cluster a test runs against (from
//!   `FLOTILLA_E2E_KUBECONFIG`, or a local one with the operator as a child process), the test's
//!   labelled namespace, and the failure report.
//! - [`msvc`]: the sample manifests, applied into a test namespace, waited on until Ready.
//! - [`http`]: requests to a Service as an in-cluster client would send them.
//! - [`tools`]: finding `helm`, `kubectl` and the Python validators; running them.
//! - [`chart`]: rendering the Helm charts and validating the rendered objects.
//! - [`chart_rbac`]: the local suite's operator runs with the chart's RBAC and nothing more.
//! - [`monitoring`]: the chart's alert rules, their promtool tests and the Grafana dashboard, as
//!   the chart checks and the observability test read them.
//! - [`prometheus`]: a real Prometheus server as a child process, and its HTTP API.
//! - [`walkthrough`], [`walkthrough_checks`]: replaying the README walkthroughs on `kubesim up`,
//!   and what is checked on the cluster they set up (leader failover, RBAC refusals).

pub mod chart;
pub mod chart_rbac;
pub mod env;
pub mod http;
pub mod monitoring;
pub mod msvc;
pub mod prometheus;
pub mod table;
pub mod tools;
pub mod walkthrough;
pub mod walkthrough_checks;
