//! The engine's side of the readiness watches: opening one per pod, and taking what each
//! reports (readiness, lost connections, and the API request counts judged in
//! `error_spans`). The watch tasks themselves are in `readiness_watch`; no decisions here but
//! the pod's health.

use super::super::pod_health::Observation;
use std::sync::Arc;
use std::time::Instant;

use super::super::readiness_watch::{self, LastLine, Reporter, WatchEvent, WatchTarget};
use super::{default_heartbeat, Engine, LateCheck, WatchSlot, WatchTask};

impl Engine {
    /// Opens the pod's readiness watch if watches are on, none is open or refused, and the pod
    /// is probed (not only scraped).
    pub(super) fn open_watch(&mut self, id: u64) {
        if !self.cfg.watch {
            return;
        }
        let Some(entry) = self.pods.get_mut(&id) else {
            return;
        };
        let (WatchSlot::Idle, Some(addr), false) =
            (&entry.watch, entry.addr, entry.svc.scrape_only)
        else {
            return;
        };
        let p = &entry.svc.probe;
        let heartbeat = self
            .cfg
            .watch_heartbeat
            .unwrap_or_else(|| default_heartbeat(p.period));
        let last_line = Arc::new(LastLine::new());
        let target = WatchTarget {
            addr,
            http: entry.http.clone(),
            grpc_service: p.grpc.clone(),
            timeout: p.timeout,
            heartbeat,
            errors_above: entry.svc.failover.max_error_rate,
            failure_threshold: p.failure_threshold,
            last_line: last_line.clone(),
        };
        let generation = self.next_watch;
        self.next_watch += 1;
        let reporter = Reporter {
            tx: self.watch_tx.clone(),
            id,
            generation,
        };
        let handle = tokio::spawn(readiness_watch::run(target, reporter)).abort_handle();
        entry.watch = WatchSlot::Open(WatchTask {
            generation,
            handle,
            counted: None,
            heartbeats: false,
            heartbeat,
            last_line,
            late_told: None,
        });
    }

    /// Probes at once every pod whose watch's heartbeat is a tenth of a heartbeat late (once
    /// per silence): the second, independent look at a pod that may hang, whose timeout then
    /// ends close behind the watch's own silence failure. One pass over the engine's list of
    /// watches with heartbeats on a timer of its own, instead of a timer per watch that every
    /// line would re-arm; a pod's entry is read only when its watch has gone quiet.
    pub(super) fn probe_late(&mut self, now: Instant) {
        let mut late = Vec::new();
        let pods = &mut self.pods;
        self.late_checks.retain(|c| {
            let heard = c.last_line.at();
            if now <= heard + c.late_after {
                return true;
            }
            // Late, or closed: the pod's entry tells which.
            let Some(WatchSlot::Open(t)) = pods.get_mut(&c.id).map(|e| &mut e.watch) else {
                return false;
            };
            if t.generation != c.generation {
                // A closed watch's check; the open one has its own.
                return false;
            }
            if !t.heartbeats {
                return false;
            }
            if t.late_told != Some(heard) {
                t.late_told = Some(heard);
                late.push(c.id);
            }
            true
        });
        for id in late {
            self.metrics
                .watch_reports
                .with_label_values(&["late"])
                .inc();
            // A probe already on its way may have left before the pod stopped, or be stuck
            // behind a scrape the pod will never answer: the late one goes out beside it, on
            // a connection of its own, so the second look at a silent pod is never skipped.
            if let Some(e) = self.pods.get_mut(&id) {
                e.late_probe = e.in_flight > 0;
            }
            self.probe_now(id, now);
        }
    }

    /// Takes one event of a pod's watch; `true` when the pod's verdict changed.
    pub(super) fn on_watch(&mut self, id: u64, generation: u64, event: WatchEvent) -> bool {
        let Some(entry) = self.pods.get_mut(&id) else {
            return false;
        };
        // Events of a watch the engine already closed or replaced say nothing about now.
        if !matches!(&entry.watch, WatchSlot::Open(t) if t.generation == generation) {
            return false;
        }
        let reports = &self.metrics.watch_reports;
        match event {
            WatchEvent::Opened { heartbeats } => {
                // Spans are judged on this watch's lines only.
                entry.spans.reset();
                if let WatchSlot::Open(t) = &mut entry.watch {
                    // Listed for the late-heartbeat check when its heartbeats start (the pod
                    // says so again with every watch response on the connection).
                    if heartbeats && !t.heartbeats {
                        self.late_checks.push(LateCheck {
                            id,
                            generation,
                            last_line: t.last_line.clone(),
                            late_after: t.heartbeat + t.heartbeat / 10,
                        });
                    }
                    t.heartbeats = heartbeats;
                    if t.counted.is_none() {
                        self.metrics.readiness_watches.inc();
                        t.counted = Some(self.metrics.readiness_watches.clone());
                    }
                }
                false
            }
            WatchEvent::Unsupported => {
                reports.with_label_values(&["unsupported"]).inc();
                entry.watch = WatchSlot::Unsupported;
                false
            }
            WatchEvent::Counts { counts, at } => {
                let svc = &entry.svc;
                let window = svc.failover.error_rate_window;
                let Some(max) = svc.failover.max_error_rate else {
                    return false;
                };
                if !entry.spans.record(at, counts, window) {
                    return false;
                }
                let Some(ratio) = entry
                    .spans
                    .failing(svc.probe.failure_threshold, max, at, window)
                else {
                    return false;
                };
                // The threshold's worth of spans is the confirmation: decisive.
                reports.with_label_values(&["error_rate"]).inc();
                self.observe(id, Observation::ErrorRate(ratio), at, true)
            }
            WatchEvent::Ended => {
                entry.watch = WatchSlot::Idle;
                false
            }
            WatchEvent::Report {
                observation,
                at,
                decisive,
                report,
            } => {
                reports.with_label_values(&[report]).inc();
                self.observe(id, observation, at, decisive)
            }
        }
    }
}
