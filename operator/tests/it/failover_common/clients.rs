//! Clients that keep their connections, as real ones do, for the failover client tests and the
//! `failover_clients` bench: a pooled HTTP/1.1 keep-alive client and an HTTP/2 client (reqwest)
//! against `users`, and a gRPC client (one tonic channel) against `orders`. Each sends a request
//! every `every` and logs its outcome; per-pod API request counts come from the pods' own
//! `/metrics`, read with the operator's parser, so a test can tell which pods served.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use flotilla_operator::failover::{error_rate, promtext};
use k8s_openapi::api::core::v1::Pod;
use tokio::task::JoinHandle;

type Log = Arc<Mutex<Vec<(Instant, bool)>>>;

/// Which kind of client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// reqwest with its default keep-alive pool, HTTP/1.1.
    Pooled,
    /// reqwest over HTTP/2 with prior knowledge (one multiplexed connection).
    Http2,
    /// tonic: one channel to the cluster IP, `ListOrders` with a JWT.
    Grpc,
}

/// A client sending steady traffic and logging each outcome (a 5xx, a failing gRPC code or a
/// transport error fails).
pub struct Client {
    log: Log,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Starts a client of `kind` against `vip` (a `users` Service for HTTP, `orders` for gRPC).
    pub async fn start(kind: Kind, vip: SocketAddr, every: Duration) -> Result<Client> {
        let log = Log::default();
        let sink = log.clone();
        let task = match kind {
            Kind::Pooled | Kind::Http2 => {
                let mut b = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .pool_idle_timeout(Duration::from_secs(90));
                if kind == Kind::Http2 {
                    b = b.http2_prior_knowledge();
                }
                let http = b.build()?;
                let url = format!("http://{vip}/users");
                tokio::spawn(each(every, sink, move || {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        match http
                            .get(&url)
                            .bearer_auth(super::sim::api_token())
                            .send()
                            .await
                        {
                            Ok(r) => r.status().as_u16() < 500 && r.bytes().await.is_ok(),
                            Err(_) => false,
                        }
                    }
                }))
            }
            Kind::Grpc => {
                let channel = tonic::transport::Channel::from_shared(format!("http://{vip}"))?
                    .timeout(Duration::from_secs(2))
                    .connect_timeout(Duration::from_secs(2))
                    .connect_lazy();
                let (token, _) =
                    super::sim::signer()?.issue("5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f")?;
                let bearer: tonic::metadata::MetadataValue<_> =
                    format!("Bearer {token}").parse()?;
                let client = orders::pb::orders_client::OrdersClient::new(channel);
                tokio::spawn(each(every, sink, move || {
                    let (mut client, bearer) = (client.clone(), bearer.clone());
                    async move {
                        let mut req = tonic::Request::new(orders::pb::ListOrdersRequest::default());
                        req.metadata_mut().insert("authorization", bearer);
                        client.list_orders(req).await.is_ok()
                    }
                }))
            }
        };
        Ok(Client { log, task })
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

async fn each<F, Fut>(every: Duration, log: Log, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = call().await;
        if let Ok(mut l) = log.lock() {
            l.push((Instant::now(), ok));
        }
    }
}

/// API requests a pod has answered so far: `http_requests_total` plus
/// `grpc_server_handled_total`, without the probe, metrics and health series (the same count
/// the failover engine watches for sticky connections). Read from the pod's `/metrics`.
pub async fn api_requests(pod: &Pod, port: i32) -> Result<f64> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .ok_or_else(|| anyhow!("pod has no IP"))?;
    let text = reqwest::Client::new()
        .get(format!("http://{ip}:{port}/metrics"))
        .header("connection", "close")
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?;
    let samples = promtext::parse(&text).map_err(|e| anyhow!("metrics: {e:?}"))?;
    let api = samples
        .iter()
        .filter_map(|s| error_rate::sample_counts(s).or_else(|| error_rate::grpc_sample_counts(s)))
        .filter(|c| c.probes == 0.0)
        .map(|c| c.total)
        .sum();
    Ok(api)
}

/// Sum of [`api_requests`] over pods.
pub async fn api_requests_of(pods: &[Pod], port: i32) -> Result<f64> {
    let mut n = 0.0;
    for p in pods {
        n += api_requests(p, port).await?;
    }
    Ok(n)
}

/// Creates a MicroService running `orders` (gRPC health, metrics scraped over HTTP on the same
/// port, `/admin/faults` enabled), with `env` added to the pods' environment.
pub async fn create_orders(
    sim: &flotilla_testkit::Harness,
    name: &str,
    replicas: i32,
    env: &[(&str, &str)],
    tweak: impl FnOnce(&mut flotilla_crds::MicroServiceSpec),
) -> Result<()> {
    use k8s_openapi::api::core::v1::EnvVar;
    let mut spec = flotilla_crds::MicroServiceSpec::with_image("flotilla/orders:0.1.0");
    spec.replicas = replicas;
    spec.port = super::sim::PORT;
    spec.service.port = super::sim::PORT;
    spec.health.grpc = Some(flotilla_crds::GrpcHealthSpec {
        service: "flotilla.orders.v1.Orders".into(),
    });
    let mut vars = vec![
        ("ADMIN_TOKEN", super::sim::ADMIN_TOKEN),
        ("JWT_PUBLIC_KEYS", super::sim::PUBLIC_KEYS),
    ];
    vars.extend_from_slice(env);
    spec.env = Some(
        vars.into_iter()
            .map(|(k, v)| EnvVar {
                name: k.into(),
                value: Some(v.into()),
                ..EnvVar::default()
            })
            .collect(),
    );
    tweak(&mut spec);
    sim.msvcs()
        .create(
            &kube::api::PostParams::default(),
            &flotilla_crds::MicroService::new(name, spec),
        )
        .await?;
    Ok(())
}
