//! What the shipping tests share: the `shipping` binary as a process on a real broker, the
//! signed traffic verdict as Flotilla's prober sends it, and readers of the service's metrics
//! and API. Events are published with `flotilla_testkit::amqp`'s publisher; the broker tells
//! its queues' lengths.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use flotilla_kit::verdict::testing::TestSigner;
use flotilla_kit::verdict::{unix_ms_now, SIGNATURE_HEADER};
use flotilla_testkit::process::{Builder, Process};
use flotilla_testkit::rabbitmq::Broker;
use flotilla_testkit::wait;

/// `/admin/faults` bearer of the test processes.
pub const ADMIN: &str = "shipping-admin-7f3c9e2b4d1a";

/// Deadline of the waits: a loaded 2-core machine, a broker that restarts.
pub const WAIT: Duration = Duration::from_secs(60);

/// The operator's verdict key, as the prober signs with it.
pub fn operator() -> TestSigner {
    TestSigner::new("k1", [42; 32])
}

/// The `shipping` binary on `broker`, named `pod` (its `POD_NAME`), its SQLite file in `dir`,
/// with fast retries and reconnects.
pub fn shipping(broker: &Broker, pod: &str, dir: &Path) -> Builder {
    Builder::new(pod, env!("CARGO_BIN_EXE_shipping"))
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("SHIPPING_DEV")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .listen_env("LISTEN_ADDR")
        .env("AMQP_URL", broker.url())
        .env("ADMIN_TOKEN", ADMIN)
        .env("POD_NAME", pod)
        .env("FLOTILLA_VERDICT_KEYS", operator().keys_entry())
        .env("SHUTDOWN_DELAY_MS", "0")
        .env("SHIPPING_RETRY_BASE_MS", "100")
        .env("SHIPPING_RETRY_MAX_MS", "400")
        .env("SHIPPING_MAX_ATTEMPTS", "3")
        .env("AMQP_RECONNECT_MAX_MS", "1000")
        .env("RUST_LOG", "info,shipping=debug")
}

/// One HTTP client for the tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// A running shipping process and what the tests ask it.
pub struct Shipping {
    /// The process.
    pub process: Process,
    /// Its `POD_NAME`.
    pub pod: String,
}

impl Shipping {
    /// Starts `builder` and waits until it is ready (database and broker).
    pub async fn start(builder: Builder, pod: &str) -> Result<Self> {
        Ok(Self {
            process: builder.start().await?,
            pod: pod.to_owned(),
        })
    }

    /// The base URL.
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// The value of one series of `/metrics` (`name` or `name{labels}` as printed), 0 when
    /// absent.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        Ok(flotilla_testkit::http::metric(&self.url(), series)
            .await?
            .unwrap_or(0.0))
    }

    /// Sets faults through `/admin/faults`.
    pub async fn faults(&self, body: serde_json::Value) -> Result<()> {
        let r = http()
            .post(format!("{}/admin/faults", self.url()))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await?;
        ensure!(r.status() == 200, "faults: {}", r.status());
        Ok(())
    }

    /// A readiness probe carrying `verdict`, signed by the operator for this pod; the status
    /// and body.
    pub async fn probe(&self, verdict: Option<&str>) -> Result<(u16, serde_json::Value)> {
        let mut req = http().get(format!("{}/readyz", self.url()));
        if let Some(v) = verdict {
            req = req.header("Flotilla-Traffic", v).header(
                SIGNATURE_HEADER,
                operator().header(&self.pod, v, unix_ms_now()),
            );
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or_default()))
    }

    /// The shipment of `order`, if the API has one.
    pub async fn shipment(&self, order: &str) -> Result<Option<serde_json::Value>> {
        flotilla_testkit::http::get_json_if_found(&format!("{}/shipments/{order}", self.url()))
            .await
    }

    /// Every shipment (up to 500).
    pub async fn shipments(&self) -> Result<Vec<serde_json::Value>> {
        let page: serde_json::Value = http()
            .get(format!("{}/shipments?limit=500", self.url()))
            .send()
            .await?
            .json()
            .await?;
        Ok(page["items"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `series` reaches `at_least`.
    pub async fn wait_metric(&self, series: &str, at_least: f64) -> Result<f64> {
        wait::poll(
            &format!("{} to reach {series} >= {at_least}", self.pod),
            WAIT,
            || async move {
                let v = self.metric(series).await?;
                Ok((v >= at_least).then_some(v))
            },
        )
        .await
    }
}
