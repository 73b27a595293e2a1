//! What the bench reads from the operator's `/metrics`: the engine's published state (to know a
//! restarted operator has judged every pod), the detection histogram and the steps of the last
//! failover. Reads only; no judgement here.

use std::net::SocketAddr;

use anyhow::{anyhow, Result};
use flotilla_operator::failover::promtext::{self, Sample};
use flotilla_testkit::http::{self, Method};

/// One scrape of the operator's metrics.
pub struct Scrape(Vec<Sample>);

impl Scrape {
    /// Scrapes `addr`.
    pub async fn read(addr: SocketAddr) -> Result<Scrape> {
        let reply = http::send(http::request(
            Method::GET,
            &format!("http://{addr}/metrics"),
        ))
        .await?;
        let samples = promtext::parse(&reply.body).map_err(|e| anyhow!("metrics: {e:?}"))?;
        Ok(Scrape(samples))
    }

    fn value(&self, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        self.0
            .iter()
            .find(|s| s.name == name && label.is_none_or(|(k, v)| s.label(k) == Some(v)))
            .map(|s| s.value)
    }

    /// `flotilla_failover_healthy_endpoints` of the MicroService `name` (absent until the engine
    /// has published a decision for it).
    pub fn healthy_endpoints(&self, name: &str) -> Option<f64> {
        self.value("flotilla_failover_healthy_endpoints", Some(("name", name)))
    }

    /// (sum, count) of `flotilla_failover_detection_seconds{change="failover"}`: from the first
    /// failed probe of the decisive run to the traffic change written.
    pub fn detection(&self) -> (f64, f64) {
        let pick = |name| {
            self.value(name, Some(("change", "failover")))
                .unwrap_or(0.0)
        };
        (
            pick("flotilla_failover_detection_seconds_sum"),
            pick("flotilla_failover_detection_seconds_count"),
        )
    }

    /// The last failover's steps as unix seconds: first failed probe of the decisive run,
    /// decided, membership writes acknowledged (NaN when none was recorded).
    pub fn last_failover(&self) -> [f64; 3] {
        ["first_failure", "decided", "written"].map(|step| {
            self.value(
                "flotilla_failover_last_failover_timestamp_seconds",
                Some(("step", step)),
            )
            .unwrap_or(f64::NAN)
        })
    }
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
