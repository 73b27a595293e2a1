//! The failover engine's inventory written by hand, for tests that feed the engine directly:
//! services and pods in namespace `t`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use flotilla_operator::failover::outputs::Desired;
use tokio::sync::watch;

use flotilla_crds::labels;
use flotilla_operator::failover::inventory::{ObjKey, PodInfo, ServiceInfo};
use flotilla_operator::failover::policy::{FailoverPolicy, ProbePolicy};

/// A service whose pods listen on `port`, probed with the default policy; failover-enabled
/// with `fallback` when there is one.
pub fn service(name: &str, port: u16, fallback: Option<&str>) -> ServiceInfo {
    ServiceInfo {
        key: ObjKey::new("t", name),
        uid: None,
        generation: Some(1),
        failover_enabled: fallback.is_some(),
        analysing: false,
        probe: ProbePolicy {
            port,
            ..ProbePolicy::default()
        },
        failover: FailoverPolicy {
            fallback: fallback.map(str::to_owned),
            ..FailoverPolicy::default()
        },
        port_name: "http".into(),
        report_traffic: false,
        scrape_only: false,
        status: None,
        traffic: None,
        conditions: vec![],
    }
}

/// Pod `<svc>-<i>` at `ip`, Ready and in its service's traffic.
pub fn pod(svc: &str, i: usize, ip: IpAddr) -> PodInfo {
    PodInfo {
        key: ObjKey::new("t", format!("{svc}-{i}")),
        service: svc.to_owned(),
        ip: Some(ip),
        ready: true,
        serves: [(labels::serves(svc), "true".to_owned())].into(),
        uid: Some(format!("uid-{svc}-{i}")),
        canary: false,
    }
}

/// How long [`wait_for`] waits for the engine on a loaded machine.
const WAIT: Duration = Duration::from_secs(30);

/// The engine's desired state once `pred` holds, or an error naming `what` with the last state
/// seen.
pub async fn wait_for(
    rx: &mut watch::Receiver<Arc<Desired>>,
    what: &str,
    pred: impl FnMut(&Desired) -> bool,
) -> Result<Arc<Desired>> {
    wait_for_within(rx, what, WAIT, pred).await
}

/// [`wait_for`] with a deadline of `within`, for tests whose point is that the state comes
/// sooner than anything but the behaviour under test could bring it.
pub async fn wait_for_within(
    rx: &mut watch::Receiver<Arc<Desired>>,
    what: &str,
    within: Duration,
    mut pred: impl FnMut(&Desired) -> bool,
) -> Result<Arc<Desired>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let cur = rx.borrow_and_update().clone();
        if pred(&cur) {
            return Ok(cur);
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            bail!("timed out after {within:?} waiting for {what}; last desired state: {cur:#?}");
        }
    }
}
