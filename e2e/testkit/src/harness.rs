//! [`Harness`]: one test's cluster (local or from a kubeconfig), the CRD, the test's labelled
//! namespace and the operator, with the waits and the failure report every test uses.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_crds::{labels, MicroService, MicroServiceSpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};

use crate::cluster::{self, LocalCluster, NodeSetup, FIELD_MANAGER};
use crate::namespace::TestNamespace;
use crate::operator::{Launcher, RunningOperator, Target};
use crate::paths::tail;
use crate::wait::{self, Changes};

/// Set (to anything) to keep each test's namespace after the test, for a look with kubectl.
pub const KEEP_NAMESPACES_ENV: &str = "FLOTILLA_E2E_KEEP_NAMESPACES";

/// How to start a [`Harness`]; from [`Harness::builder`].
pub struct Builder {
    test: String,
    namespace: Option<String>,
    external: Option<PathBuf>,
    node: Option<NodeSetup>,
    launcher: Option<Launcher>,
    timeout: Duration,
}

impl Builder {
    /// Runs pods: the local cluster gets a node, configured by `setup` (defaults otherwise).
    pub fn node(
        mut self,
        setup: impl FnOnce(&mut kubesim::node::NodeConfig) + Send + 'static,
    ) -> Self {
        self.node = Some(Box::new(setup));
        self
    }

    /// Runs the operator (started with the harness, and by [`Harness::start_operator`]).
    pub fn operator(mut self, launcher: Launcher) -> Self {
        self.launcher = Some(launcher);
        self
    }

    /// Names the test's namespace `name` exactly, instead of a fresh name made from the test's
    /// (for tests whose fixtures name their namespace; the cluster must be the test's own).
    pub fn namespace(mut self, name: &str) -> Self {
        self.namespace = Some(name.to_owned());
        self
    }

    /// The deadline of [`Harness::wait`] and [`Harness::poll`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses the cluster named by the kubeconfig in the environment variable `var`, when set and
    /// not empty, instead of a local one. The operator is expected to run there already.
    pub fn external_from_env(mut self, var: &str) -> Self {
        self.external = std::env::var_os(var)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from);
        self
    }

    /// Starts (or connects to) the cluster, installs the CRD, creates the test's namespace and
    /// starts the operator.
    pub async fn start(self) -> Result<Harness> {
        let (local, client, kubeconfig) = match self.external {
            Some(kubeconfig) => {
                let client = cluster::client_from_kubeconfig(&kubeconfig).await?;
                (None, client, Some(kubeconfig))
            }
            None => {
                let local = LocalCluster::start_with(self.node).await?;
                let client = local.client();
                (Some(local), client, None)
            }
        };
        cluster::install_crd(&client).await?;
        let namespace = match &self.namespace {
            Some(name) => TestNamespace::create_named(&client, name, &self.test).await?,
            None => TestNamespace::create(&client, &self.test).await?,
        };
        let harness = Harness {
            ns: namespace.name.clone(),
            client,
            test: self.test,
            timeout: self.timeout,
            operator: tokio::sync::Mutex::new(None),
            launcher: self.launcher,
            changes: OnceLock::new(),
            reported: AtomicBool::new(false),
            namespace,
            kubeconfig,
            local,
        };
        harness.start_operator().await?;
        Ok(harness)
    }
}

/// One test's cluster, namespace and operator.
pub struct Harness {
    /// Client for the cluster.
    pub client: Client,
    /// The test's namespace.
    pub ns: String,
    test: String,
    timeout: Duration,
    // Field order is drop order: the operator and the watches go before the cluster.
    operator: tokio::sync::Mutex<Option<Box<dyn RunningOperator>>>,
    launcher: Option<Launcher>,
    changes: OnceLock<Changes>,
    reported: AtomicBool,
    namespace: TestNamespace,
    /// The kubeconfig of an external cluster.
    kubeconfig: Option<PathBuf>,
    /// The local cluster, unless the cluster is external (the operator then runs there already).
    local: Option<LocalCluster>,
}

/// A test body for [`Harness::run`].
pub type Body<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

impl Harness {
    /// A harness for the test `test` (it names and labels the namespace): a local cluster with
    /// no node and no operator until the builder adds them; waits default to two minutes.
    pub fn builder(test: &str) -> Builder {
        Builder {
            test: test.to_owned(),
            namespace: None,
            external: None,
            node: None,
            launcher: None,
            timeout: wait::DEFAULT_TIMEOUT,
        }
    }

    /// The local cluster, when the test runs on one; `None` on an external cluster.
    pub fn local(&self) -> Option<&LocalCluster> {
        self.local.as_ref()
    }

    /// True when the cluster is the local one this harness started.
    pub fn is_local(&self) -> bool {
        self.local().is_some()
    }

    /// The kubeconfig of the test's cluster, for tools that the test runs as a user would
    /// (kubectl, its plugins).
    pub fn kubeconfig_path(&self) -> Option<&std::path::Path> {
        match &self.local {
            Some(local) => Some(local.kubeconfig_path()),
            None => self.kubeconfig.as_deref(),
        }
    }

    /// The kubesim API server of the local cluster (for fault injection).
    pub fn kubesim(&self) -> Result<&kubesim::Cluster> {
        self.local()
            .map(LocalCluster::kubesim)
            .context("the test needs the local cluster (kubesim)")
    }

    /// The default deadline of this harness's waits.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Starts the operator, unless it runs already or this harness has none (an external
    /// cluster runs its own).
    pub async fn start_operator(&self) -> Result<()> {
        let (Some(launcher), Some(local)) = (&self.launcher, &self.local) else {
            return Ok(());
        };
        let mut slot = self.operator.lock().await;
        if slot.is_none() {
            let target = Target {
                client: self.client.clone(),
                kubeconfig: local.kubeconfig_path(),
                state_dir: local.state_dir(),
            };
            *slot = Some(launcher(target).await?);
        }
        Ok(())
    }

    /// Stops the operator (see [`RunningOperator::stop`]); returns whether one was running.
    pub async fn stop_operator(&self) -> Result<bool> {
        let running = self.operator.lock().await.take();
        match running {
            Some(operator) => operator.stop().await.map(|()| true),
            None => Ok(false),
        }
    }

    /// The namespaced API of `K` in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// MicroServices of the test namespace.
    pub fn msvcs(&self) -> Api<MicroService> {
        self.api()
    }
    /// Deployments of the test namespace.
    pub fn deployments(&self) -> Api<Deployment> {
        self.api()
    }
    /// Services of the test namespace.
    pub fn services(&self) -> Api<Service> {
        self.api()
    }
    /// ConfigMaps of the test namespace.
    pub fn config_maps(&self) -> Api<ConfigMap> {
        self.api()
    }
    /// HorizontalPodAutoscalers of the test namespace.
    pub fn hpas(&self) -> Api<HorizontalPodAutoscaler> {
        self.api()
    }
    /// Pods of the test namespace.
    pub fn pods(&self) -> Api<Pod> {
        self.api()
    }
    /// EndpointSlices of the test namespace.
    pub fn slices(&self) -> Api<EndpointSlice> {
        self.api()
    }

    /// Creates the MicroService `name` with `spec`.
    pub async fn create(&self, name: &str, spec: MicroServiceSpec) -> Result<MicroService> {
        let ms = MicroService::new(name, spec);
        self.msvcs()
            .create(&PostParams::default(), &ms)
            .await
            .with_context(|| format!("creating MicroService {name}"))
    }

    /// Server-side applies `msvc` into the test namespace (field manager `flotilla-e2e`).
    pub async fn apply(&self, msvc: &MicroService) -> Result<MicroService> {
        let mut obj = msvc.clone();
        obj.metadata.namespace = Some(self.ns.clone());
        obj.metadata.resource_version = None;
        obj.metadata.uid = None;
        obj.metadata.managed_fields = None;
        obj.status = None;
        let name = obj.name_any();
        self.msvcs()
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .with_context(|| format!("applying MicroService {name}"))
    }

    /// Merge-patches the spec of the MicroService `name`.
    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) -> Result<MicroService> {
        let body = serde_json::json!({ "spec": spec });
        self.msvcs()
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .with_context(|| format!("patching MicroService {name}"))
    }

    /// The live (not terminating) pods of the MicroService `name`.
    pub async fn pods_of(&self, name: &str) -> Result<Vec<Pod>> {
        let lp = ListParams::default().labels(&format!("{}={name}", labels::INSTANCE));
        Ok(self
            .pods()
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// Addresses of the ready endpoints of the Service `name`.
    pub async fn ready_endpoints(&self, name: &str) -> Result<BTreeSet<String>> {
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
        Ok(self
            .slices()
            .list(&lp)
            .await?
            .items
            .into_iter()
            .flat_map(|s| s.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .filter_map(|e| e.addresses.first().cloned())
            .collect())
    }

    /// Reasons of the (events.k8s.io) Events about the object `name`, oldest first.
    pub async fn event_reasons(&self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .events_of(name)
            .await?
            .into_iter()
            .map(|(reason, _)| reason)
            .collect())
    }

    /// Reasons and notes of the (events.k8s.io) Events about the object `name`, oldest first.
    pub async fn events_of(&self, name: &str) -> Result<Vec<(String, String)>> {
        let mut events = self
            .api::<Event>()
            .list(&ListParams::default())
            .await?
            .items;
        events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
        Ok(events
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| Some((e.reason?, e.note.unwrap_or_default())))
            .collect())
    }

    /// Waits until `probe` returns `Some`, re-running it whenever an object in the test
    /// namespace changes (a watch, not a timer). Probes read API state only; for anything else
    /// use [`Harness::poll`]. On timeout prints the failure report.
    pub async fn wait<T, F, Fut>(&self, what: &str, probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        self.wait_within(what, self.timeout, probe).await
    }

    /// [`Harness::wait`] with its own deadline.
    pub async fn wait_within<T, F, Fut>(&self, what: &str, timeout: Duration, probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let changes = self
            .changes
            .get_or_init(|| Changes::watch(&self.client, &self.ns));
        let result = changes.until(what, timeout, probe).await;
        self.report_on(result).await
    }

    /// Waits until `probe` returns `Some`, calling it every 100 ms: for state the API server
    /// does not hold (HTTP replies, a client's request log). On timeout prints the report.
    pub async fn poll<T, F, Fut>(&self, what: &str, probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        self.poll_within(what, self.timeout, probe).await
    }

    /// [`Harness::poll`] with its own deadline.
    pub async fn poll_within<T, F, Fut>(&self, what: &str, timeout: Duration, probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let result = wait::poll(what, timeout, probe).await;
        self.report_on(result).await
    }

    /// Waits until the MicroService `name` is Ready for its current generation.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> Result<MicroService> {
        let result = wait::for_object(&self.msvcs(), name, timeout, is_ready).await;
        self.report_on(result).await
    }

    /// Passes `result` on, printing the failure report first when it is an error.
    pub async fn report_on<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(err) = &result {
            eprintln!("test {} failed: {err:#}", self.test);
            self.print_report().await;
        }
        result
    }

    /// Prints the failure report (once per harness): the namespace's objects, pods, pod logs and
    /// Events, and the operator's log when it runs as a process.
    pub async fn print_report(&self) {
        if self.reported.swap(true, Ordering::SeqCst) {
            return;
        }
        eprintln!(
            "{}",
            crate::dump::namespace_report(&self.client, &self.ns).await
        );
        match &self.local {
            Some(local) => eprintln!("{}", local.diagnostics()),
            None => eprintln!("{}", crate::dump::pod_logs(&self.client, &self.ns).await),
        }
        let operator = self.operator.lock().await;
        if let Some(log) = operator.as_ref().and_then(|o| o.log()) {
            eprintln!("===== operator log (last 80 lines)\n{}", tail(log, 80));
        }
        if let Some(kubeconfig) = &self.kubeconfig {
            eprintln!("(cluster from kubeconfig {})", kubeconfig.display());
        }
    }

    /// Runs `body` against this harness: on failure prints the report; afterwards deletes the
    /// namespace (unless `FLOTILLA_E2E_KEEP_NAMESPACES` is set) and shuts the cluster down.
    pub async fn run<F>(self, body: F) -> Result<()>
    where
        F: for<'a> FnOnce(&'a Harness) -> Body<'a>,
    {
        let result = body(&self).await;
        let result = self.report_on(result).await;
        if std::env::var_os(KEEP_NAMESPACES_ENV).is_none() {
            if let Err(err) = self.namespace.delete().await {
                eprintln!("cleanup: {err:#}");
            }
        }
        self.shutdown().await;
        result
    }

    /// Stops the operator, the pods and the API server gracefully.
    pub async fn shutdown(self) {
        if let Err(err) = self.stop_operator().await {
            eprintln!("stopping the operator: {err:#}");
        }
        drop(self.changes);
        if let Some(local) = self.local {
            local.shutdown().await;
        }
    }
}

/// True when the status describes the current generation and says Ready.
pub fn is_ready(msvc: &MicroService) -> bool {
    let Some(status) = msvc.status.as_ref() else {
        return false;
    };
    status.observed_generation == msvc.metadata.generation
        && wait::is_true(&status.conditions, flotilla_crds::conditions::READY)
}
