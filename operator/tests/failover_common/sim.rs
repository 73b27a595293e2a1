//! A whole cluster for one failover test: kubesim's API server and node (pods are real `users`
//! processes on loopback addresses), the CRD, a namespace and the operator in-process, plus
//! helpers to inject faults, send traffic through a Service's cluster IP and read endpoints.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_crds::{labels, MicroService, MicroServiceSpec};
use flotilla_operator::OperatorConfig;
use k8s_openapi::api::core::v1::{EnvVar, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kubesim::node::{self, ImageTable, Ipv4Range, Node, NodeConfig};
use kubesim::{Cluster, ClusterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous: the machine may be loaded.
pub const WAIT: Duration = Duration::from_secs(90);
/// Token for the services' `/admin/faults`.
pub const ADMIN_TOKEN: &str = "failover-test-token";
/// Port of every test Service (and container).
pub const PORT: i32 = 8080;

type Running = (
    oneshot::Sender<()>,
    JoinHandle<Result<(), flotilla_operator::Error>>,
);

/// One test's cluster.
pub struct Sim {
    pub client: Client,
    pub ns: String,
    node: Option<Node>,
    operator: Option<Running>,
    /// Where the operator serves `/metrics` (`None`: not served).
    pub metrics_addr: Option<SocketAddr>,
    _cluster: Cluster,
    _state: tempfile::TempDir,
}

/// The target directory the test binary was built into (`target/debug`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

fn users_binary() -> Result<PathBuf> {
    // `FLOTILLA_USERS_BIN` wins; a benchmark built in release may use the debug build.
    let candidates = [
        std::env::var_os("FLOTILLA_USERS_BIN").map(PathBuf::from),
        Some(target_dir().join("users")),
        target_dir().parent().map(|t| t.join("debug").join("users")),
    ];
    if let Some(found) = candidates.iter().flatten().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "{} is missing: build it with `cargo build -p users` (the test command builds the \
         workspace first)",
        target_dir().join("users").display()
    )
}

impl Sim {
    /// Starts the cluster, the node, the CRD, namespace `ns` and the operator.
    pub async fn start(ns: &str) -> Result<Sim> {
        Sim::start_with(ns, None).await
    }

    /// Like [`Sim::start`], with the operator serving `/metrics` on `metrics_addr`.
    pub async fn start_with(ns: &str, metrics_addr: Option<SocketAddr>) -> Result<Sim> {
        let users = users_binary()?;
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
                name: Some(ns.to_owned()),
                labels: Some([("flotilla.rs/test".to_owned(), ns.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        let state = tempfile::tempdir()?;
        let mut images = ImageTable::default();
        images.prepend("flotilla/users:*", users);
        // A /25 pair per test process: distinct from other test processes (PID) on the shared
        // loopback range.
        let pid = std::process::id();
        let a = u8::try_from(10 + pid % 200).unwrap_or(10);
        let b = u8::try_from(128 + (pid / 200) % 128).unwrap_or(128);
        let mut config = NodeConfig::new(state.path(), images);
        config.pod_range = Ipv4Range::new(Ipv4Addr::new(127, a, b, 0), 25);
        config.service_range = Ipv4Range::new(Ipv4Addr::new(127, a, b, 128), 25);
        config.resync = Duration::from_millis(500);
        config.shutdown_grace = Duration::from_secs(2);
        let node = node::start(client.clone(), config).await?;
        let mut sim = Sim {
            client,
            ns: ns.to_owned(),
            node: Some(node),
            operator: None,
            metrics_addr,
            _cluster: cluster,
            _state: state,
        };
        sim.start_operator();
        let msvcs = sim.msvcs();
        wait(WAIT, "the MicroService API", || async {
            Ok(msvcs
                .list(&ListParams::default())
                .await
                .is_ok()
                .then_some(()))
        })
        .await?;
        Ok(sim)
    }

    /// (Re)starts the in-process operator.
    pub fn start_operator(&mut self) {
        let (tx, rx) = oneshot::channel::<()>();
        let config = OperatorConfig {
            metrics_addr: self.metrics_addr,
            ..OperatorConfig::default()
        };
        let handle = tokio::spawn(flotilla_operator::run(
            self.client.clone(),
            config,
            async move {
                let _ = rx.await;
            },
        ));
        self.operator = Some((tx, handle));
    }

    /// Stops the operator and waits for it to end.
    pub async fn stop_operator(&mut self) -> Result<()> {
        if let Some((tx, handle)) = self.operator.take() {
            let _ = tx.send(());
            tokio::time::timeout(WAIT, handle)
                .await
                .context("operator did not stop")???;
        }
        Ok(())
    }

    /// Stops the node gracefully (pods get SIGTERM).
    pub async fn shutdown(mut self) {
        let _ = self.stop_operator().await;
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }

    pub fn msvcs(&self) -> Api<MicroService> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn slices(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates a MicroService running the `users` service with `/admin/faults` enabled.
    pub async fn create_users(
        &self,
        name: &str,
        replicas: i32,
        tweak: impl FnOnce(&mut MicroServiceSpec),
    ) -> Result<()> {
        let mut spec = MicroServiceSpec::with_image("flotilla/users:0.1.0");
        spec.replicas = replicas;
        spec.port = PORT;
        spec.service.port = PORT;
        spec.env = Some(vec![EnvVar {
            name: "ADMIN_TOKEN".into(),
            value: Some(ADMIN_TOKEN.into()),
            ..EnvVar::default()
        }]);
        tweak(&mut spec);
        self.msvcs()
            .create(&PostParams::default(), &MicroService::new(name, spec))
            .await?;
        Ok(())
    }

    /// The live (not terminating) pods of a MicroService.
    pub async fn pods_of(&self, svc: &str) -> Result<Vec<Pod>> {
        let lp = ListParams::default().labels(&format!("{}={svc}", labels::INSTANCE));
        Ok(self
            .pods()
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// Waits until a MicroService has `n` kubelet-ready pods, and returns them.
    pub async fn ready_pods(&self, svc: &str, n: usize) -> Result<Vec<Pod>> {
        self.wait(&format!("{n} ready pods of {svc}"), || async {
            let pods = self.pods_of(svc).await?;
            Ok((pods.len() == n && pods.iter().all(is_ready)).then_some(pods))
        })
        .await
    }

    /// The Service's cluster IP and port.
    pub async fn vip(&self, svc: &str) -> Result<SocketAddr> {
        let ip = self
            .wait(&format!("cluster IP of {svc}"), || async {
                Ok(self
                    .services()
                    .get(svc)
                    .await?
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .filter(|ip| !ip.is_empty() && ip != "None"))
            })
            .await?;
        Ok(format!("{ip}:{PORT}").parse()?)
    }

    /// Addresses of the ready endpoints of a Service.
    pub async fn ready_endpoints(&self, svc: &str) -> Result<BTreeSet<String>> {
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
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

    /// The MicroService's `status.failover.active` (`primary`/`fallback`).
    pub async fn active(&self, svc: &str) -> Result<Option<String>> {
        let ms = self.msvcs().get(svc).await?;
        Ok(ms
            .status
            .and_then(|s| s.failover)
            .and_then(|f| f.active)
            .map(|a| a.as_str().to_owned()))
    }

    /// Reasons of the Events about a MicroService.
    pub async fn event_reasons(&self, svc: &str) -> Result<Vec<String>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(svc))
            .filter_map(|e| e.reason)
            .collect())
    }

    /// Prints the namespace's objects (for failing tests).
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
        eprintln!("--- Pods\n{}", list(self.pods()).await);
        eprintln!("--- EndpointSlices\n{}", list(self.slices()).await);
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        eprintln!("--- Events\n{}", list(events).await);
    }

    /// Polls `f` until it yields a value; dumps the namespace and fails after [`WAIT`].
    pub async fn wait<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        match wait(WAIT, what, f).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.dump().await;
                Err(e)
            }
        }
    }
}

/// Whether the kubelet reports the pod Ready.
pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's `serves.flotilla.rs/<svc>` label.
pub fn serves(p: &Pod, svc: &str) -> Option<String> {
    p.metadata
        .labels
        .as_ref()?
        .get(&labels::serves(svc))
        .cloned()
}

/// `<podIP>:8080`.
pub fn pod_addr(p: &Pod) -> Result<SocketAddr> {
    let ip = p
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .ok_or_else(|| anyhow!("pod has no IP"))?;
    Ok(format!("{ip}:{PORT}").parse()?)
}

/// The pod's IP.
pub fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

/// Polls `f` every 100 ms until it yields a value, failing after `timeout`.
pub async fn wait<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow!(
        "timed out after {timeout:?} waiting for {what}; last error: {last:?}"
    ))
}

/// One HTTP/1.1 request on a fresh connection (so each request picks a backend anew); returns
/// the status code, or an error when the connection fails.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Result<u16> {
    Ok(http_text(addr, method, path, body).await?.0)
}

/// One request on a fresh connection: the status code and the whole reply (headers and body).
pub async fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timeout")??;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .context("read timeout")??;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status in reply: {text:?}"))?;
    Ok((code, text.into_owned()))
}

/// Injects faults into one pod through its `/admin/faults`.
pub async fn set_fault(p: &Pod, json: &str) -> Result<()> {
    let code = http(pod_addr(p)?, "POST", "/admin/faults", Some(json)).await?;
    if code != 200 {
        bail!("setting faults {json} answered {code}");
    }
    Ok(())
}

/// Clears the faults of one pod.
pub async fn clear_fault(p: &Pod) -> Result<()> {
    let code = http(pod_addr(p)?, "DELETE", "/admin/faults", None).await?;
    if code != 200 {
        bail!("clearing faults answered {code}");
    }
    Ok(())
}

/// A client sending steady traffic to an address, recording each request's outcome.
pub struct Traffic {
    log: std::sync::Arc<std::sync::Mutex<Vec<(Instant, bool)>>>,
    task: JoinHandle<()>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Traffic {
    /// Sends `GET path` to `addr` every `every`, each on a fresh connection.
    pub fn start(addr: SocketAddr, path: &'static str, every: Duration) -> Traffic {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let ok = matches!(http(addr, "GET", path, None).await, Ok(c) if c < 500);
                if let Ok(mut l) = sink.lock() {
                    l.push((Instant::now(), ok));
                }
            }
        });
        Traffic { log, task }
    }

    /// Outcomes so far.
    pub fn outcomes(&self) -> Vec<(Instant, bool)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether the last `n` requests all succeeded.
    pub fn last_ok(&self, n: usize) -> bool {
        let o = self.outcomes();
        o.len() >= n && o[o.len() - n..].iter().all(|(_, ok)| *ok)
    }
}
