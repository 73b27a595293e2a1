//! Flotilla's end-to-end checks, one binary. Chart checks (`chart*`, `images`, `render`,
//! `scripts`) need helm and the validation venv (`e2e/install-tools.sh`); the cluster tests
//! (`suite`, `failover`) run on a local kubesim or, with `FLOTILLA_E2E_KUBECONFIG`, on a real
//! cluster; `readme`, `chart_helm` and `chart_upgrade` run the README's walkthroughs and the
//! chart upgrade as written on `kubesim up`; `observability` runs the chart's alerts and
//! dashboard on a real Prometheus (Debian's `prometheus`, also from `e2e/install-tools.sh`)
//! against a local kubesim, and `chart_monitoring` runs `promtool` on the alerts. nextest runs
//! every test in its own process.

mod chart;
mod chart_helm;
mod chart_kubesim;
mod chart_monitoring;
mod chart_notifications;
mod chart_samples;
mod chart_upgrade;
mod dashboard;
mod events;
mod failover;
mod images;
mod observability;
mod plugin;
mod readme;
mod render;
mod scripts;
mod suite;
