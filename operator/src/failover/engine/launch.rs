//! Which due probes go out, and what each carries: the verdict (signed while leading), a
//! metrics scrape when one is due, and for a pod that is only scraped (its service reports
//! traffic figures without being probed), the scrape alone. Runs on the engine task; the probes
//! themselves run in `probe.rs`.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::super::inventory::ServiceInfo;
use super::super::policy::StickyAction;
use super::super::probe::{self, ProbeTarget};
use super::super::scrape::Rejected;
use super::{jittered, Engine, EngineConfig, VerdictSigning, WatchSlot, WATCHED_PROBE_EVERY};

/// How often a pod of `svc` is visited: its probe period, or for a pod that is only scraped,
/// `traffic_scrape_every`.
pub(super) fn cadence(svc: &ServiceInfo, cfg: &EngineConfig) -> Duration {
    if svc.scrape_only {
        cfg.traffic_scrape_every
    } else {
        svc.probe.period
    }
}

impl Engine {
    /// Launches every probe due by `horizon`, none earlier than a tenth of its pod's cadence
    /// (the jitter of a period) before it is due.
    pub(super) fn launch_due(&mut self, now: Instant, horizon: Instant) {
        let mut not_yet = Vec::new();
        // Checked once per batch: a standby (or a leader past its renew deadline) says nothing.
        let signing = self
            .cfg
            .verdicts
            .as_ref()
            .and_then(VerdictSigning::keys_if_leading);
        while let Some(Reverse((due, _))) = self.heap.peek() {
            if *due > horizon {
                break;
            }
            let Some(Reverse((due, id))) = self.heap.pop() else {
                break;
            };
            let Some(entry) = self.pods.get_mut(&id) else {
                continue;
            };
            if entry.next_due != due {
                continue;
            }
            let cadence = cadence(&entry.svc, &self.cfg);
            if due.saturating_duration_since(now) > cadence / 10 {
                not_yet.push(Reverse((due, id)));
                continue;
            }
            let svc = entry.svc.clone();
            // A probe launched early keeps its cadence: the next period counts from when it was due.
            let next = due.max(now) + jittered(cadence);
            entry.next_due = next;
            self.heap.push(Reverse((next, id)));
            let Some(addr) = entry.addr else {
                continue;
            };
            if entry.waits_for_probe() {
                continue;
            }
            // Ejected pods are also scraped when the service restarts sticky pods, to see
            // whether clients still reach them.
            let restart_sticky = svc.failover.sticky == StickyAction::Restart;
            // A rollout analysis judges the canary by its 5xx ratio: its pods are scraped at
            // every probe, not once per `scrape_every`.
            let every = if svc.analysing {
                Duration::ZERO
            } else {
                self.cfg.scrape_every
            };
            let since_scrape = |every: Duration| {
                entry
                    .last_scrape
                    .is_none_or(|t| now.saturating_duration_since(t) >= every)
            };
            // Request figures need a scrape every `traffic_scrape_every` at least.
            let scrape_due = ((svc.failover.scrape_metrics || (restart_sticky && entry.ejected()))
                && since_scrape(every))
                || (svc.report_traffic && since_scrape(self.cfg.traffic_scrape_every));
            let verdict = entry.verdict_at(now);
            // A steady pod whose watch has heartbeats is judged by the watch: its periodic probe
            // goes out only to carry a new verdict, a due scrape, while the watch is silent past
            // a late heartbeat, or the verdict again every `WATCHED_PROBE_EVERY` (a pod lets an unrepeated
            // `ejected` lapse after 10 s).
            let said = (verdict, signing.is_some());
            let watched = matches!(&entry.watch, WatchSlot::Open(t) if t.heartbeats && !t.silent());
            let steady = entry.health.healthy && entry.health.consecutive_failures == 0;
            if watched
                && steady
                && !scrape_due
                && entry.probed.is_some_and(|(s, t)| {
                    s == said && now.saturating_duration_since(t) < WATCHED_PROBE_EVERY
                })
            {
                continue;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.results.get("skipped").inc();
                continue;
            };
            entry.probed = Some((said, now));
            let scrape_permit = if scrape_due {
                let p = self.scrape_permits.clone().try_acquire_owned().ok();
                if p.is_none() {
                    self.metrics
                        .scrape_rejected
                        .with_label_values(&[Rejected::Busy.label()])
                        .inc();
                }
                p
            } else {
                None
            };
            entry.in_flight += 1;
            entry.late_probe = false;
            // A pod whose heartbeat is late has already been silent for more than a heartbeat:
            // its probe waits at most one more (less than the timeout at the default period).
            let timeout = match &entry.watch {
                WatchSlot::Open(t) if t.heartbeats && t.silent() => {
                    svc.probe.timeout.min(t.heartbeat)
                }
                _ => svc.probe.timeout,
            };
            let client = self.client.clone();
            let limits = self.cfg.scrape_limits;
            let signature = signing
                .as_deref()
                .zip(verdict)
                .map(|(keys, v)| entry.signature(keys, v, now));
            let http = entry.http.clone();
            let conn = entry.conn.take();
            self.probes.spawn(async move {
                let p = &svc.probe;
                let target = ProbeTarget {
                    addr,
                    http: http.as_deref(),
                    grpc_service: p.grpc.as_deref(),
                    readiness: !svc.scrape_only,
                    scrape: scrape_permit.is_some(),
                    traffic: svc.report_traffic,
                    timeout,
                    limits,
                    verdict,
                    signature: signature.as_deref(),
                };
                let rep = probe::run(&client, &target, conn).await;
                drop((permit, scrape_permit));
                (id, rep)
            });
        }
        self.heap.extend(not_yet);
    }
}
