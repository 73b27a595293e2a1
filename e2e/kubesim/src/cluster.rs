//! Starting and stopping a kubesim API server, and the kubeconfig and client that point at it.
//! A secure cluster (the CLI's default) serves HTTPS with a fresh CA, authenticates every
//! request and enforces RBAC; its kubeconfig carries the CA and an admin client certificate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::Shared;
use crate::error::Error;
use crate::faults::{FaultInjector, Faults};
use crate::registry::ResKey;
use crate::store::{EventType, Store, DEFAULT_HISTORY};

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Loopback address to listen on.
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free port.
    pub port: u16,
    /// Where to write the kubeconfig; `None` writes it into a temporary directory that lives
    /// as long as the [`Cluster`].
    pub kubeconfig_path: Option<PathBuf>,
    /// How many changes are kept for watches resuming from a resourceVersion.
    pub watch_history: usize,
    /// The simulated node's state directory; `GET pods/<name>/log` reads container logs
    /// from it (layout in `node::logs`). Without it, log requests answer 404.
    pub node_state_dir: Option<PathBuf>,
    /// Serve HTTPS with a fresh CA, require authentication (401) and enforce RBAC (403). The
    /// kubeconfig then carries the CA and an admin client certificate (`system:masters`).
    /// Off (the default for in-process test clusters), the server speaks plain HTTP and every
    /// request is the admin's unless it impersonates someone.
    pub secure: bool,
    /// The `kubernetes` Service's cluster IP: with it, the cluster starts with the Service
    /// `default/kubernetes` (port 443, or the API port when kubesim cannot bind 443) and its
    /// EndpointSlice pointing at the API server, and the serving certificate names this IP.
    pub kubernetes_service_ip: Option<Ipv4Addr>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            kubeconfig_path: None,
            watch_history: DEFAULT_HISTORY,
            node_state_dir: None,
            secure: false,
            kubernetes_service_ip: None,
        }
    }
}

/// A running kubesim API server. Dropping it (or [`Cluster::shutdown`]) stops it.
pub struct Cluster {
    url: String,
    ca_pem: Option<String>,
    admin_token: String,
    kubernetes_service: Option<(Ipv4Addr, u16)>,
    kubeconfig: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    shared: Arc<Shared>,
    client: kube::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

/// Stores what every cluster starts with: its namespaces, the default RBAC roles and bindings,
/// and (with an IP) the `kubernetes` Service.
fn seed(shared: &Shared, kubernetes: Option<(Ipv4Addr, u16)>, api_port: u16) {
    let mut st = shared.store.lock();
    let key = crate::api::namespaces_key();
    for ns in INITIAL_NAMESPACES {
        let obj = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": crate::api::now(), "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        st.put(&key, "", ns, obj, EventType::Added);
    }
    for (res, mut obj) in crate::rbac::defaults() {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        obj["metadata"]["uid"] = serde_json::json!(uuid::Uuid::new_v4().to_string());
        obj["metadata"]["creationTimestamp"] = serde_json::json!(crate::api::now());
        st.put(&res, "", &name, obj, EventType::Added);
    }
    if let Some((ip, port)) = kubernetes {
        let (svc, slice) = kubernetes_service(ip, port, api_port);
        let res = |group: &str, plural: &str| ResKey {
            group: group.into(),
            plural: plural.into(),
        };
        st.put(
            &res("", "services"),
            "default",
            "kubernetes",
            svc,
            EventType::Added,
        );
        st.put(
            &res("discovery.k8s.io", "endpointslices"),
            "default",
            "kubernetes",
            slice,
            EventType::Added,
        );
    }
}

/// The namespaces every cluster starts with.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Credentials a secure cluster's kubeconfig carries.
struct KubeconfigTls<'a> {
    ca_pem: &'a str,
    client: &'a crate::tls::CertPair,
}

fn kubeconfig_text(url: &str, tls: Option<&KubeconfigTls<'_>>) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (ca, user) = match tls {
        Some(t) => (
            format!("\n    certificate-authority-data: {}", b64(t.ca_pem)),
            format!(
                "\n    client-certificate-data: {}\n    client-key-data: {}",
                b64(&t.client.cert_pem),
                b64(&t.client.key_pem)
            ),
        ),
        None => (String::new(), " {}".to_string()),
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kubesim
  cluster:
    server: {url}{ca}
users:
- name: kubesim
  user:{user}
contexts:
- name: kubesim
  context:
    cluster: kubesim
    user: kubesim
    namespace: default
current-context: kubesim
"
    )
}

/// Whether this process may bind ports below 1024 (it runs as root).
fn can_bind_privileged() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The `kubernetes` Service and its EndpointSlice, pointing at the API server.
fn kubernetes_service(
    ip: Ipv4Addr,
    port: u16,
    api_port: u16,
) -> (serde_json::Value, serde_json::Value) {
    let now = crate::api::now();
    let svc = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": now, "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
            "ports": [{"name": "https", "port": port, "protocol": "TCP", "targetPort": api_port}]},
        "status": {"loadBalancer": {}},
    });
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": now, "labels": {"kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}],
    });
    (svc, slice)
}

impl Cluster {
    /// Binds the listener, writes the kubeconfig and starts serving.
    pub async fn start(config: ClusterConfig) -> Result<Cluster, Error> {
        if !config.host.is_loopback() {
            return Err(Error::NotLoopback(config.host));
        }
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let scheme = if config.secure { "https" } else { "http" };
        let url = format!("{scheme}://{local}");

        let (tempdir, kubeconfig) = match config.kubeconfig_path {
            Some(p) => (None, p),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("kubesim-")
                    .tempdir()
                    .map_err(Error::TempDir)?;
                let path = dir.path().join("kubeconfig");
                (Some(dir), path)
            }
        };
        let kubeconfig_err = |source| Error::Kubeconfig {
            path: kubeconfig.clone(),
            source,
        };
        let dir = kubeconfig
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        std::fs::create_dir_all(&dir).map_err(kubeconfig_err)?;

        let mut auth = crate::auth::Authenticator::new();
        let admin_token = crate::auth::random_token();
        auth.add_token(admin_token.clone(), crate::auth::UserInfo::admin());
        let (tls, ca_pem, text) = if config.secure {
            let mut sans = vec![local.ip().to_string(), "127.0.0.1".to_string()];
            if let Some(ip) = config.kubernetes_service_ip {
                sans.push(ip.to_string());
            }
            let pki = crate::tls::Pki::generate(&sans)?;
            pki.write_to(&dir)?;
            let client = pki.issue_client("kubesim-admin", Some(crate::auth::MASTERS))?;
            let text = kubeconfig_text(
                &url,
                Some(&KubeconfigTls {
                    ca_pem: pki.ca_pem(),
                    client: &client,
                }),
            );
            let token_path = dir.join("admin.token");
            std::fs::write(&token_path, &admin_token).map_err(kubeconfig_err)?;
            (
                Some(pki.server_config()?),
                Some(pki.ca_pem().to_string()),
                text,
            )
        } else {
            (None, None, kubeconfig_text(&url, None))
        };
        std::fs::write(&kubeconfig, &text).map_err(kubeconfig_err)?;

        let shared = Arc::new(Shared {
            store: Store::new(config.watch_history),
            auth,
            secure: config.secure,
            faults: Faults::default(),
            node_dir: config.node_state_dir.clone(),
        });
        let kubernetes_service = config.kubernetes_service_ip.map(|ip| {
            let port = if can_bind_privileged() {
                443
            } else {
                local.port()
            };
            (ip, port)
        });
        seed(&shared, kubernetes_service, local.port());

        let kconfig = kube::config::Kubeconfig::from_yaml(&text)
            .map_err(|e| Error::ClientConfig(e.to_string()))?;
        let kcfg = kube::Config::from_custom_kubeconfig(kconfig, &Default::default())
            .await
            .map_err(|e| Error::ClientConfig(e.to_string()))?;
        let client = kube::Client::try_from(kcfg)?;

        let shutdown = shared.faults.shutdown_token();
        crate::ns_defaults::spawn(shared.clone(), ca_pem.clone(), shutdown.clone());
        let task = tokio::spawn(crate::server::serve(
            listener,
            shared.clone(),
            local.to_string(),
            tls,
            shutdown.clone(),
        ));
        Ok(Cluster {
            url,
            ca_pem,
            admin_token,
            kubernetes_service,
            kubeconfig,
            _tempdir: tempdir,
            shared,
            client,
            shutdown,
            task: Some(task),
        })
    }

    /// The CA certificate (PEM) of a secure cluster.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// A bearer token of the admin user (`system:masters`). On a secure cluster it is also
    /// written next to the kubeconfig as `admin.token`.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The `kubernetes` Service's cluster IP and port, when the cluster has one.
    pub fn kubernetes_service(&self) -> Option<(Ipv4Addr, u16)> {
        self.kubernetes_service
    }

    /// Whether the cluster serves TLS and enforces authentication and RBAC.
    pub fn is_secure(&self) -> bool {
        self.shared.secure
    }

    /// The server URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The kubeconfig written at start (context `kubesim`, namespace `default`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kube-rs client for this server (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A handle to inject faults.
    pub fn faults(&self) -> FaultInjector {
        FaultInjector {
            faults: self.shared.clone(),
        }
    }

    /// Stops serving and closes every connection, including open watches.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
