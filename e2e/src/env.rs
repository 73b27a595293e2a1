//! The cluster an end-to-end test runs against, and [`run_test`].
//!
//! With `FLOTILLA_E2E_KUBECONFIG` set to a kubeconfig file, tests use that cluster, where the
//! operator is expected to run already (the kind script installs it with the chart). Without it,
//! each test starts its own local cluster with a node and the `flotilla-operator` binary as a
//! child process, exactly as it would run in a pod: as the chart's ServiceAccount, with the
//! chart's RBAC and nothing more ([`chart_rbac`]); a request the chart does not grant fails the
//! test. A plain `KUBECONFIG` is deliberately not enough: an exported one (from `kubesim up`, or
//! a production context) must never redirect the suite by accident.

use anyhow::Result;
use flotilla_testkit::harness::Body;
use flotilla_testkit::Harness;

use crate::chart_rbac;

/// Names the kubeconfig of the cluster to test; unset means a local cluster.
pub const KUBECONFIG_ENV: &str = "FLOTILLA_E2E_KUBECONFIG";

/// Starts the harness for the test `name` (see the module docs for which cluster), runs `body`,
/// and on failure prints the namespace's objects, pod logs and Events and the operator's log.
/// The namespace is deleted afterwards unless `FLOTILLA_E2E_KEEP_NAMESPACES` is set.
pub async fn run_test<F>(name: &str, body: F) -> Result<()>
where
    F: for<'a> FnOnce(&'a Harness) -> Body<'a>,
{
    Harness::builder(name)
        .external_from_env(KUBECONFIG_ENV)
        .node(|_| {})
        .operator(chart_rbac::launcher())
        .start()
        .await?
        .run(move |h| {
            let test = body(h);
            Box::pin(async move {
                test.await?;
                chart_rbac::check_no_forbidden_requests(h)
            })
        })
        .await
}
