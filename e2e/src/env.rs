//! The cluster a test runs against, and the per-test context.
//!
//! With `FLOTILLA_E2E_KUBECONFIG` set to a kubeconfig file, tests use that cluster, where the
//! operator is expected to run already (the kind script installs it with the chart). Without it,
//! each test process starts its own local cluster (see [`crate::local`]) with the operator in it.
//! A plain `KUBECONFIG` is deliberately not enough: an exported one (from `kubesim up`, or a
//! production context) must never redirect the suite by accident.

use std::future::Future;
use std::path::PathBuf;

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::namespace::TestNamespace;
use crate::{dump, local, wait};

/// Field manager of everything the suite writes.
pub const FIELD_MANAGER: &str = "flotilla-e2e";

/// Where the cluster comes from.
pub enum Backend {
    /// A cluster named by a kubeconfig; the operator already runs in it.
    External {
        /// The kubeconfig file.
        kubeconfig: PathBuf,
    },
    /// A local cluster this process started, with the operator and a node.
    Local(Box<local::LocalCluster>),
}

/// A connected cluster.
pub struct TestEnv {
    /// Client for the cluster's API server.
    pub client: Client,
    /// Where the cluster comes from (kept alive for the test's duration).
    pub backend: Backend,
}

/// Names the kubeconfig of the cluster to test; unset means a local cluster.
pub const KUBECONFIG_ENV: &str = "FLOTILLA_E2E_KUBECONFIG";

/// The kubeconfig named by `FLOTILLA_E2E_KUBECONFIG`, if any.
pub fn kubeconfig_from_env() -> Option<PathBuf> {
    std::env::var_os(KUBECONFIG_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

impl TestEnv {
    /// Connects to the cluster from the environment, or starts a local one.
    pub async fn start() -> Result<Self> {
        match kubeconfig_from_env() {
            Some(kubeconfig) => {
                let client = client_from_kubeconfig(&kubeconfig).await?;
                Ok(Self {
                    client,
                    backend: Backend::External { kubeconfig },
                })
            }
            None => {
                let cluster = local::LocalCluster::start().await?;
                let client = cluster.client();
                Ok(Self {
                    client,
                    backend: Backend::Local(Box::new(cluster)),
                })
            }
        }
    }

    /// True when the cluster is the local one this process started.
    pub fn is_local(&self) -> bool {
        matches!(self.backend, Backend::Local(_))
    }
}

/// A client for the cluster in the kubeconfig file `path` (its current context).
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    Client::try_from(config).context("building the cluster client")
}

/// Installs (or updates) the MicroService CRD from the generated manifest and waits until the
/// API server serves it.
pub async fn install_crd(client: &Client) -> Result<()> {
    let crd = flotilla_crds::crd();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(
        flotilla_crds::CRD_NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying the MicroService CRD")?;
    wait::for_object(
        &api,
        flotilla_crds::CRD_NAME,
        wait::DEFAULT_TIMEOUT,
        |crd| {
            let conditions = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .map(Vec::as_slice)
                .unwrap_or_default();
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        },
    )
    .await?;
    Ok(())
}

/// What a test body gets: the cluster and its own namespace.
pub struct Ctx<'a> {
    /// The cluster.
    pub env: &'a TestEnv,
    /// Client for the cluster.
    pub client: Client,
    /// The test's namespace.
    pub ns: String,
}

impl Ctx<'_> {
    /// The local cluster, when the test runs on one (failover tests stop and restart its
    /// operator); `None` on an external cluster.
    pub fn local(&self) -> Option<&local::LocalCluster> {
        match &self.env.backend {
            Backend::Local(cluster) => Some(cluster),
            Backend::External { .. } => None,
        }
    }
}

/// Runs the test `name`: connects to (or starts) a cluster, installs the CRD, creates the test's
/// labelled namespace, runs `body`, and on failure prints the namespace's objects and Events. The
/// namespace is deleted afterwards unless `FLOTILLA_E2E_KEEP_NAMESPACES` is set.
pub async fn run_test<F>(name: &str, body: F) -> Result<()>
where
    F: for<'a> FnOnce(&'a Ctx<'a>) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + 'a>>,
{
    let env = TestEnv::start().await?;
    install_crd(&env.client).await?;
    let ns = TestNamespace::create(&env.client, name).await?;
    let ctx = Ctx {
        env: &env,
        client: env.client.clone(),
        ns: ns.name.clone(),
    };
    let result = body(&ctx).await;
    if let Err(err) = &result {
        eprintln!("test {name} failed: {err:#}");
        eprintln!("{}", dump::namespace_report(&env.client, &ns.name).await);
        if let Backend::Local(cluster) = &env.backend {
            eprintln!("{}", cluster.diagnostics());
        }
    }
    if std::env::var_os("FLOTILLA_E2E_KEEP_NAMESPACES").is_none() {
        if let Err(err) = ns.delete().await {
            eprintln!("cleanup: {err:#}");
        }
    }
    result
}
