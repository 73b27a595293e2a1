//! The controller tests' part of the harness: the operator in-process with the test
//! configuration, and readers for the fields the tests check. The cluster, the CRD, the
//! namespace, the waits and the failure report are `flotilla-testkit`'s.

use std::time::Duration;

use anyhow::Result;
use flotilla_crds::{MicroService, MicroServiceSpec};
use flotilla_operator::OperatorConfig;
pub use flotilla_testkit::operator::InProcess;
pub use flotilla_testkit::Harness;
use k8s_openapi::api::apps::v1::Deployment;

/// Deadline of every wait. Generous: the machine may be loaded.
pub const WAIT: Duration = Duration::from_secs(60);

/// A kubesim API server (no node: nothing runs pods) with the CRD, the test's namespace and the
/// operator running in-process.
pub async fn start(test: &str) -> Result<Harness> {
    let config = test_config();
    Harness::builder(test)
        .timeout(WAIT)
        .operator(InProcess::launcher(move |client, shutdown| {
            flotilla_operator::run(client, config.clone(), shutdown)
        }))
        .start()
        .await
}

/// Like [`start`], with no operator: the test starts its own with [`spawn_operator`].
pub async fn start_without_operator(test: &str) -> Result<Harness> {
    Harness::builder(test).timeout(WAIT).start().await
}

/// Like [`start_without_operator`], in the namespace named exactly `ns` (for fixtures that name
/// their namespace).
pub async fn start_in_namespace(ns: &str) -> Result<Harness> {
    Harness::builder(ns)
        .namespace(ns)
        .timeout(WAIT)
        .start()
        .await
}

/// The operator configuration for tests: no HTTP server.
pub fn test_config() -> OperatorConfig {
    OperatorConfig {
        metrics_addr: None,
        ..OperatorConfig::default()
    }
}

/// Starts an operator in-process with `config`, besides any the harness runs.
pub fn spawn_operator(env: &Harness, config: OperatorConfig) -> InProcess {
    InProcess::spawn(env.client.clone(), move |client, shutdown| {
        flotilla_operator::run(client, config, shutdown)
    })
}

/// `spec` with the given image and defaults otherwise.
pub fn spec(image: &str) -> MicroServiceSpec {
    MicroServiceSpec::with_image(image)
}

/// The first container of a Deployment's pod template.
pub fn container(d: &Deployment) -> Option<k8s_openapi::api::core::v1::Container> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()
        .cloned()
}

/// A pod-template annotation of a Deployment.
pub fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// A condition of a MicroService's status, as (status, reason).
pub fn condition(ms: &MicroService, type_: &str) -> Option<(String, String)> {
    ms.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}
