//! The engine's side of the request figures: each pod's scrapes are kept in its
//! `TrafficWindow` (see `on_report`); here the figures of every service reporting traffic are
//! computed from them, at most once a second, for all its pods and, while a canary runs, for
//! the canary and stable pods apart; offered to the service's `Publisher`, which decides when
//! they are worth a write; and the published ones are put into the desired state. No I/O.

use std::time::{Duration, Instant};

use flotilla_crds::{labels, TrafficStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::super::inventory::ObjKey;
use super::super::outputs::{Desired, ServiceDesired};
use super::super::traffic::{self, PodRates};
use super::Engine;

/// How often the figures are computed, however often services are decided.
const COMPUTE_EVERY: Duration = Duration::from_secs(1);

/// The wall-clock time of figures, to the second: the API server keeps times to the second,
/// and a finer one would never read back equal, so the same figures would be written again.
fn observed_at() -> Time {
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

impl Engine {
    /// Computes and offers every reporting service's figures when due, and puts the published
    /// ones into `desired`: into a decided service's entry, or an entry of its own for a
    /// service whose figures alone are reported.
    pub(super) fn publish_traffic(&mut self, desired: &mut Desired, now: Instant) {
        let due = self
            .traffic_computed
            .is_none_or(|t| now.saturating_duration_since(t) >= COMPUTE_EVERY);
        if due {
            self.traffic_computed = Some(now);
            let at = observed_at();
            let keys: Vec<ObjKey> = self.traffic.keys().cloned().collect();
            for key in keys {
                let analysing = self.inv.services.get(&key).is_some_and(|s| s.analysing);
                let next = self.figures_of(&key, now, at.clone());
                if let Some(p) = self.traffic.get_mut(&key) {
                    p.offer(next, now, analysing, &self.cfg.traffic_publish);
                }
            }
        }
        for (key, p) in &self.traffic {
            let published = p.current().cloned();
            match desired.services.get_mut(key) {
                Some(want) => want.traffic = published,
                None => {
                    let want = ServiceDesired::traffic_only(
                        key.clone(),
                        labels::serves(&key.name),
                        published,
                    );
                    desired.services.insert(key.clone(), want);
                }
            }
        }
    }

    /// The figures of one service's pods over their windows; `None` when no pod has any.
    fn figures_of(&self, key: &ObjKey, now: Instant, at: Time) -> Option<TrafficStatus> {
        let mut canary: Vec<PodRates> = Vec::new();
        let mut stable: Vec<PodRates> = Vec::new();
        for p in self.inv.pods_of(key) {
            let Some(r) = self.entry(&p.key).and_then(|e| e.traffic.rates(now)) else {
                continue;
            };
            if p.canary {
                canary.push(r);
            } else {
                stable.push(r);
            }
        }
        let all = traffic::figures(canary.iter().chain(&stable));
        let canary = traffic::figures(&canary);
        let stable = traffic::figures(&stable);
        traffic::status(
            all.as_ref(),
            canary.as_ref(),
            stable.as_ref(),
            self.cfg.traffic_window,
            at,
        )
    }
}
