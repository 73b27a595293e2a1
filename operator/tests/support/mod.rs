//! Shared harness for the controller tests: a kubesim API server with the CRD installed, a
//! namespace per test, and the operator running in-process against it.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use flotilla_crds::{MicroService, MicroServiceSpec};
use flotilla_operator::OperatorConfig;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kubesim::{Cluster, ClusterConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous: the machine may be loaded.
pub const WAIT: Duration = Duration::from_secs(60);

/// A cluster, a namespace and a running operator.
pub struct Env {
    pub cluster: Cluster,
    pub client: Client,
    pub ns: String,
    stop: Option<oneshot::Sender<()>>,
    operator: Option<JoinHandle<Result<(), flotilla_operator::Error>>>,
}

impl Env {
    /// Starts kubesim, installs the CRD, creates namespace `ns` and starts the operator.
    pub async fn start(ns: &str) -> Result<Env> {
        let mut env = Env::start_without_operator(ns).await?;
        env.start_operator();
        Ok(env)
    }

    /// Starts kubesim, installs the CRD and creates namespace `ns`; no operator.
    pub async fn start_without_operator(ns: &str) -> Result<Env> {
        let cluster = Cluster::start(ClusterConfig::default()).await?;
        let client = cluster.client();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.patch(
            flotilla_crds::CRD_NAME,
            &PatchParams::apply("flotilla-tests").force(),
            &Patch::Apply(flotilla_crds::crd()),
        )
        .await
        .context("installing the CRD")?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.to_string()),
                labels: Some([("flotilla.rs/test".to_string(), ns.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .context("creating the namespace")?;
        let msvcs: Api<MicroService> = Api::namespaced(client.clone(), ns);
        wait_until("the MicroService API to be served", || async {
            Ok(msvcs
                .list(&ListParams::default())
                .await
                .is_ok()
                .then_some(()))
        })
        .await?;
        Ok(Env {
            cluster,
            client,
            ns: ns.to_string(),
            stop: None,
            operator: None,
        })
    }

    /// (Re)starts the in-process operator with the test configuration.
    pub fn start_operator(&mut self) {
        let (stop, handle) = spawn_operator(self.client.clone(), test_config());
        self.stop = Some(stop);
        self.operator = Some(handle);
    }

    /// Stops the operator gracefully and returns its result.
    pub async fn stop_operator(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(op) = self.operator.take() {
            tokio::time::timeout(WAIT, op)
                .await
                .context("operator did not stop")???;
        }
        Ok(())
    }

    pub fn msvcs(&self) -> Api<MicroService> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn hpas(&self) -> Api<HorizontalPodAutoscaler> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates a MicroService.
    pub async fn create(&self, name: &str, spec: MicroServiceSpec) -> Result<MicroService> {
        let ms = MicroService::new(name, spec);
        Ok(self.msvcs().create(&PostParams::default(), &ms).await?)
    }

    /// Merge-patches a MicroService spec.
    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) -> Result<MicroService> {
        let body = serde_json::json!({ "spec": spec });
        Ok(self
            .msvcs()
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await?)
    }

    /// Prints the MicroServices and children of the namespace (for failing tests).
    pub async fn dump(&self) {
        async fn list<K>(api: Api<K>) -> String
        where
            K: kube::Resource
                + Clone
                + serde::de::DeserializeOwned
                + serde::Serialize
                + std::fmt::Debug,
        {
            match api.list(&ListParams::default()).await {
                Ok(l) => serde_norway::to_string(&l.items).unwrap_or_default(),
                Err(e) => format!("list failed: {e}"),
            }
        }
        eprintln!("--- MicroServices\n{}", list(self.msvcs()).await);
        eprintln!("--- Deployments\n{}", list(self.deployments()).await);
        eprintln!("--- Services\n{}", list(self.services()).await);
        eprintln!("--- ConfigMaps\n{}", list(self.config_maps()).await);
        eprintln!("--- HPAs\n{}", list(self.hpas()).await);
    }

    /// Polls `f` until it yields a value; dumps the namespace and fails after [`WAIT`].
    pub async fn wait<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        match wait_until(what, f).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.dump().await;
                Err(e)
            }
        }
    }
}

/// The operator configuration for tests: no HTTP server.
pub fn test_config() -> OperatorConfig {
    OperatorConfig {
        metrics_addr: None,
        ..OperatorConfig::default()
    }
}

/// A running in-process operator: the stop signal and its task.
pub type Running = (
    oneshot::Sender<()>,
    JoinHandle<Result<(), flotilla_operator::Error>>,
);

/// Starts the operator in-process with `config`.
pub fn spawn_operator(client: Client, config: OperatorConfig) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(flotilla_operator::run(client, config, async move {
        let _ = rx.await;
    }));
    (tx, handle)
}

/// Polls `f` every 100 ms until it yields a value, for at most [`WAIT`]. Errors from `f` count
/// as "not yet" (the API may be failing on purpose); the last one is reported on timeout.
pub async fn wait_until<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < WAIT {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow!(
        "timed out after {WAIT:?} waiting for {what}; last error: {last:?}"
    ))
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
