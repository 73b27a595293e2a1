//! A whole cluster for one failover test, on the shared harness: kubesim's API server and node
//! (pods are real `users` processes on loopback addresses), the CRD, a namespace and the operator
//! in-process, plus helpers to inject faults, send traffic through a Service's cluster IP and
//! read the failover status.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use flotilla_crds::{labels, MicroService, MicroServiceSpec};
use flotilla_operator::OperatorConfig;
use flotilla_testkit::http::Method;
use flotilla_testkit::operator::InProcess;
use flotilla_testkit::paths::workspace_binary;
pub use flotilla_testkit::Harness;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use kube::api::PostParams;
use tokio::task::JoinHandle;

/// Deadline of every wait. Generous: the machine may be loaded.
pub const WAIT: Duration = Duration::from_secs(90);
/// Token for the services' `/admin/faults`.
pub const ADMIN_TOKEN: &str = "failover-test-token";
/// The key the test tokens are signed with: the public development key, whose public half
/// ([`auth::jwt::DEV_PUBLIC_KEY`]) the users and orders pods verify with.
pub const SIGNING_KEY: &str = auth::jwt::DEV_SIGNING_KEY;
/// The test pods' `JWT_PUBLIC_KEYS`.
pub const PUBLIC_KEYS: &str = auth::jwt::DEV_PUBLIC_KEY;
/// Port of every test Service (and container).
pub const PORT: i32 = 8080;

/// One test's cluster.
pub type Sim = Harness;

/// What the failover tests add to the harness.
pub trait FailoverSim: Sized {
    /// Starts the cluster, the node, the CRD, the test's namespace and the operator.
    async fn start(test: &str) -> Result<Self> {
        Self::start_with(test, None).await
    }

    /// Like [`FailoverSim::start`], with the operator serving `/metrics` on `metrics_addr`.
    async fn start_with(test: &str, metrics_addr: Option<SocketAddr>) -> Result<Self> {
        Self::start_tuned(test, metrics_addr, |_| {}, |_| {}).await
    }

    /// Like [`FailoverSim::start_with`], with `operator` adjusting the operator's configuration
    /// on every (re)start (so a bench can change it between restarts) and `node` the node's.
    async fn start_tuned(
        test: &str,
        metrics_addr: Option<SocketAddr>,
        operator: impl Fn(&mut OperatorConfig) + Send + Sync + 'static,
        node: impl FnOnce(&mut kubesim::node::NodeConfig) + Send + 'static,
    ) -> Result<Self>;

    /// Creates a MicroService running the `users` service with `/admin/faults` enabled.
    async fn create_users(
        &self,
        name: &str,
        replicas: i32,
        tweak: impl FnOnce(&mut MicroServiceSpec),
    ) -> Result<()>;

    /// Waits until a MicroService has `n` kubelet-ready pods, and returns them.
    async fn ready_pods(&self, svc: &str, n: usize) -> Result<Vec<Pod>>;

    /// The Service's cluster IP and port.
    async fn vip(&self, svc: &str) -> Result<SocketAddr>;

    /// The MicroService's `status.failover.active` (`primary`/`fallback`).
    async fn active(&self, svc: &str) -> Result<Option<String>>;
}

impl FailoverSim for Harness {
    async fn start_tuned(
        test: &str,
        metrics_addr: Option<SocketAddr>,
        operator: impl Fn(&mut OperatorConfig) + Send + Sync + 'static,
        node: impl FnOnce(&mut kubesim::node::NodeConfig) + Send + 'static,
    ) -> Result<Self> {
        // Fail early, naming the build command, when the pods' binary is missing.
        workspace_binary("users", "users")?;
        // Sticky restarts on, as a cluster admin turns them on with the chart's value.
        let config = OperatorConfig {
            metrics_addr,
            sticky_restarts: true,
            ..OperatorConfig::default()
        };
        Harness::builder(test)
            .timeout(WAIT)
            .node(|n| {
                n.resync = Duration::from_millis(500);
                n.shutdown_grace = Duration::from_secs(2);
                node(n);
            })
            .operator(InProcess::launcher(move |client, shutdown| {
                let mut config = config.clone();
                operator(&mut config);
                flotilla_operator::run(client, config, shutdown)
            }))
            .start()
            .await
    }

    async fn create_users(
        &self,
        name: &str,
        replicas: i32,
        tweak: impl FnOnce(&mut MicroServiceSpec),
    ) -> Result<()> {
        let mut spec = MicroServiceSpec::with_image("flotilla/users:0.1.0");
        spec.replicas = replicas;
        spec.port = PORT;
        spec.service.port = PORT;
        let var = |name: &str, value: &str| EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..EnvVar::default()
        };
        spec.env = Some(vec![
            var("ADMIN_TOKEN", ADMIN_TOKEN),
            var("JWT_PUBLIC_KEYS", PUBLIC_KEYS),
        ]);
        tweak(&mut spec);
        self.msvcs()
            .create(&PostParams::default(), &MicroService::new(name, spec))
            .await?;
        Ok(())
    }

    async fn ready_pods(&self, svc: &str, n: usize) -> Result<Vec<Pod>> {
        self.wait(&format!("{n} ready pods of {svc}"), || async {
            let pods = self.pods_of(svc).await?;
            Ok((pods.len() == n && pods.iter().all(is_ready)).then_some(pods))
        })
        .await
    }

    async fn vip(&self, svc: &str) -> Result<SocketAddr> {
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

    async fn active(&self, svc: &str) -> Result<Option<String>> {
        let ms = self.msvcs().get(svc).await?;
        Ok(ms
            .status
            .and_then(|s| s.failover)
            .and_then(|f| f.active)
            .map(|a| a.as_str().to_owned()))
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

/// A signer of test tokens for users and orders (with [`SIGNING_KEY`]).
pub fn signer() -> Result<auth::Signer> {
    let key = auth::jwt::SigningKey::from_pem(SIGNING_KEY)?;
    let audiences = vec![
        auth::jwt::AUDIENCE_USERS.to_owned(),
        auth::jwt::AUDIENCE_ORDERS.to_owned(),
    ];
    Ok(auth::Signer::new(
        key,
        Vec::new(),
        audiences,
        Duration::from_secs(24 * 3600),
    ))
}

/// An admin's token for the users API (signed with [`SIGNING_KEY`]), made once.
pub fn api_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        signer()
            .ok()
            .and_then(|s| {
                s.issue_as(
                    "0b7e4c1a-2f3d-4e5a-9b6c-7d8e9f0a1b2c",
                    auth::jwt::Role::Admin,
                )
                .ok()
            })
            .map(|(token, _)| token)
            .unwrap_or_default()
    })
}

/// One request with the admin token (`/admin/faults`) or an admin's API token (elsewhere), on
/// a fresh connection (so each request picks a backend anew); returns the status code, or an
/// error when the connection fails.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Result<u16> {
    Ok(http_text(addr, method, path, body).await?.0)
}

/// One request as [`http`] does it: the status code and the body.
pub async fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| anyhow!("{method}: {e}"))?;
    let request = flotilla_testkit::http::request(method, &format!("http://{addr}{path}"))
        .bearer_auth(if path.starts_with("/admin/") {
            ADMIN_TOKEN
        } else {
            api_token()
        })
        .header("content-type", "application/json")
        // One request per connection, said out loud: a pod that is failing readiness closes
        // idle keep-alive connections, which could race a request.
        .header("connection", "close")
        .body(body.unwrap_or("").to_owned());
    let reply = flotilla_testkit::http::send(request).await?;
    Ok((reply.status, reply.body))
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
    /// Per request: when it was sent, when it ended, and whether it succeeded.
    log: std::sync::Arc<std::sync::Mutex<Vec<(Instant, Instant, bool)>>>,
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
                let sent = Instant::now();
                let ok = matches!(http(addr, "GET", path, None).await, Ok(c) if c < 500);
                if let Ok(mut l) = sink.lock() {
                    l.push((sent, Instant::now(), ok));
                }
            }
        });
        Traffic { log, task }
    }

    /// Outcomes so far, each at the time its request ended.
    pub fn outcomes(&self) -> Vec<(Instant, bool)> {
        self.outcomes_at(|_, ended| ended)
    }

    /// Outcomes so far, each at the time `at(sent, ended)` picks.
    pub fn outcomes_at(&self, at: impl Fn(Instant, Instant) -> Instant) -> Vec<(Instant, bool)> {
        self.log
            .lock()
            .map(|l| {
                l.iter()
                    .map(|&(sent, ended, ok)| (at(sent, ended), ok))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the last `n` requests all succeeded.
    pub fn last_ok(&self, n: usize) -> bool {
        let o = self.outcomes();
        o.len() >= n && o[o.len() - n..].iter().all(|(_, ok)| *ok)
    }
}
