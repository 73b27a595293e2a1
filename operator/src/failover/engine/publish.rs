//! Turning verdicts into the engine's outputs: run the pure decider for every failover-enabled
//! service, queue the notices its changes call for, and publish the desired state for the writer.
//!
//! Runs on the engine task and owns no state of its own; nothing here talks to the network.

use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use flotilla_crds::labels;

use super::super::decide::{decide, Change, Decision, FallbackView, Membership, PodView};
use super::super::inventory::{ObjKey, ServiceInfo};
use super::super::outputs::{self, Desired, Member, Notice, ServiceDesired};
use super::super::policy::StickyAction;
use super::super::sticky::{choose_restart, RestartLimits, StickyPod};
use super::Engine;

impl Engine {
    /// Decides every service, adds the request figures, queues notices and publishes the desired
    /// state when it differs.
    pub(super) fn decide_all(&mut self, now: Instant) {
        let mut desired = Desired::default();
        let mut notices = Vec::new();
        let keys: Vec<ObjKey> = self.svcs.keys().cloned().collect();
        let mut sticky_pods = 0;
        for key in keys {
            let Some(info) = self.inv.services.get(&key).cloned() else {
                continue;
            };
            let Some(d) = self.decide_one(&key, &info, now) else {
                continue;
            };
            // A service probed only for a rollout analysis never moves traffic: its verdicts go
            // to status for the analysis, without failover Events.
            if !info.analysis_only() {
                self.queue_notices(&key, &info, &d, now, &mut notices);
                sticky_pods += self.sticky_notices(&key, &info, &d, now, &mut notices);
            }
            self.record_verdicts(&key, &info, &d, now);
            let want = self.service_desired(key, &info, &d);
            desired.services.insert(want.key.clone(), want);
        }
        self.metrics
            .sticky_pods
            .set(i64::try_from(sticky_pods).unwrap_or(i64::MAX));
        self.publish_traffic(&mut desired, now);
        self.desired_tx.send_if_modified(|cur| {
            if **cur == desired {
                false
            } else {
                *cur = std::sync::Arc::new(desired);
                true
            }
        });
        // Notices go out after the desired state they belong to, so a writer woken by a notice
        // already sees the decision's memberships and writes them before announcing.
        for n in notices {
            if self.notice_tx.try_send(n).is_err() {
                self.metrics
                    .writes
                    .with_label_values(&["notice", "dropped"])
                    .inc();
            }
        }
    }

    /// Remembers each primary pod's traffic verdict for its next readiness probes: `ejected`
    /// when the decision takes it out of its Service (Enforce mode only: in Observe mode
    /// nothing moves, so every pod stays `serving`). A fallback pod that leaves the primary's
    /// traffic is told `ejected` until its label shows it, and `fallback_drain` more, so the
    /// primary's clients leave it too; taken back into that traffic, it is told `serving`.
    fn record_verdicts(&mut self, key: &ObjKey, info: &ServiceInfo, d: &Decision, now: Instant) {
        use flotilla_crds::traffic;
        let enforce = info.failover.mode == super::super::policy::Mode::Enforce;
        // Drained from the decision until the pod's label shows it out of the primary's Service
        // (the writer and the watch take a moment), then `fallback_drain` more, so a client
        // that reconnects meanwhile is not sent back to it.
        let drain_until = now + self.cfg.fallback_drain;
        let label_key = labels::serves(&key.name);
        for (name, m) in &d.fallback_members {
            let pod = ObjKey::new(key.ns.clone(), name.clone());
            if enforce && *m == Membership::In {
                // In the primary's traffic, the pod serves the primary's clients: it hears
                // `serving` at once. A drain from an earlier failback ends (the primary failed
                // again within it), and an `ejected` the pod still holds from one, perhaps
                // another leader's, is replaced rather than left to close their connections.
                if let Some(entry) = self.entry_mut(&pod) {
                    if entry.drain_until.is_none_or(|t| now < t) {
                        entry.drain_until = Some(now);
                    }
                }
                continue;
            }
            let labelled = self.inv.pods.get(&pod).is_some_and(|p| {
                p.serves.get(&label_key).map(String::as_str) == Some(labels::SERVES_TRUE)
            });
            let left = d
                .pod_changes
                .iter()
                .any(|c| c.fallback && c.pod == *name && c.to == Membership::Out);
            if !enforce || *m != Membership::Out || !(labelled || left) {
                continue;
            }
            if let Some(entry) = self.entry_mut(&pod) {
                entry.drain_until = Some(drain_until);
            }
        }
        for (name, m) in &d.primary_members {
            let pod = ObjKey::new(key.ns.clone(), name.clone());
            let Some(entry) = self.entry_mut(&pod) else {
                continue;
            };
            entry.verdict = Some(if enforce && *m == Membership::Out {
                traffic::EJECTED
            } else {
                traffic::SERVING
            });
        }
        // A new verdict is told at once rather than at each pod's next turn (up to a period,
        // or `WATCHED_PROBE_EVERY` for a steady watched pod): a pod closes its clients' kept
        // connections only when it hears `ejected`.
        let members = d.primary_members.iter().chain(&d.fallback_members);
        let untold: Vec<u64> = members
            .filter_map(|(name, _)| {
                let id = *self.ids.get(&ObjKey::new(key.ns.clone(), name.clone()))?;
                self.pods.get(&id)?.untold(now).then_some(id)
            })
            .collect();
        for id in untold {
            self.probe_now(id, now);
        }
    }

    /// Announces pods that newly show sticky connections and, when the service opts in and the
    /// rate limit allows, asks the writer to restart one of them. Returns the number of sticky
    /// pods of the service (for the gauge).
    fn sticky_notices(
        &mut self,
        key: &ObjKey,
        info: &ServiceInfo,
        d: &Decision,
        now: Instant,
        notices: &mut Vec<Notice>,
    ) -> usize {
        let restart = info.failover.sticky == StickyAction::Restart && self.cfg.sticky_restarts;
        let mut sticky = Vec::new();
        let pod_keys: Vec<ObjKey> = self.inv.pods_of(key).map(|p| p.key.clone()).collect();
        for pod in pod_keys {
            let Some(entry) = self.entry_mut(&pod) else {
                continue;
            };
            let is_sticky = entry.sticky.sticky(now);
            let requests = entry.sticky.requests().unwrap_or(0);
            if is_sticky && !entry.sticky_announced {
                notices.push(Notice::Sticky {
                    svc: key.clone(),
                    pod: pod.clone(),
                    requests,
                    restart,
                });
            }
            entry.sticky_announced = is_sticky;
            if is_sticky {
                sticky.push(StickyPod {
                    name: pod.name.clone(),
                    requests,
                    failing: !entry.health.healthy,
                });
            }
        }
        let count = sticky.len();
        if !restart {
            return count;
        }
        let Some(svc) = self.svcs.get_mut(key) else {
            return count;
        };
        let wall = jiff::Timestamp::now();
        let limits = RestartLimits {
            remembered: svc.last_restart,
            recorded: info
                .status
                .as_ref()
                .and_then(|s| s.last_sticky_restart_time.as_ref())
                .map(|t| t.0),
            recent: &mut self.recent_restarts,
            now,
            wall,
        };
        let inv = &self.inv;
        let uid_of = |name: &str| {
            inv.pods
                .get(&ObjKey::new(key.ns.clone(), name.to_owned()))
                .and_then(|p| p.uid.clone())
        };
        let Some((p, uid)) = choose_restart(&info.failover, d, &sticky, uid_of, limits) else {
            return count;
        };
        svc.last_restart = Some(now);
        svc.history.last_sticky_restart = Some(Time(wall));
        notices.push(Notice::Restart {
            svc: key.clone(),
            pod: ObjKey::new(key.ns.clone(), p.name.clone()),
            uid,
            requests: p.requests,
            at: Time(wall),
        });
        count
    }

    fn view(&self, svc: &ObjKey) -> Vec<PodView> {
        self.inv
            .pods_of(svc)
            .filter_map(|p| {
                let h = &self.entry(&p.key)?.health;
                Some(PodView {
                    name: p.key.name.clone(),
                    kubelet_ready: p.ready,
                    healthy: h.healthy,
                    detected_from: if h.healthy {
                        None
                    } else {
                        h.unhealthy_detected_from
                    },
                })
            })
            .collect()
    }

    /// Runs the decider for one service against the current verdicts of its pods and its
    /// fallback's, and records a target change in the service's history.
    fn decide_one(&mut self, key: &ObjKey, info: &ServiceInfo, now: Instant) -> Option<Decision> {
        let primary = self.view(key);
        let fb_key = info
            .failover
            .fallback
            .as_ref()
            .map(|f| ObjKey::new(key.ns.clone(), f.clone()));
        let fb_info = fb_key.as_ref().and_then(|k| self.inv.services.get(k));
        let fb_pods = fb_key.as_ref().map(|k| self.view(k)).unwrap_or_default();
        let fallback = fb_info.map(|f| FallbackView {
            pods: &fb_pods,
            port_name_matches: f.port_name == info.port_name,
        });
        let entry = self.svcs.get_mut(key)?;
        let d = decide(&mut entry.state, &info.failover, &primary, fallback, now);
        match &d.change {
            Some(Change::FailedOver { reason, .. }) => {
                entry.history.last_failover = Some((Time(jiff::Timestamp::now()), reason.clone()));
            }
            Some(Change::FailedBack { .. }) => {
                entry.history.last_failback = Some(Time(jiff::Timestamp::now()));
            }
            None => {}
        }
        Some(d)
    }

    /// Collects the Events a decision calls for: a service change, a newly held flip, and every
    /// pod whose membership changed. (Sent by `decide_all`; a full queue drops the notice,
    /// counted, and never blocks.)
    fn queue_notices(
        &mut self,
        key: &ObjKey,
        info: &ServiceInfo,
        d: &Decision,
        now: Instant,
        notices: &mut Vec<Notice>,
    ) {
        let mode = info.failover.mode;
        if let Some(change) = &d.change {
            notices.push(Notice::Service {
                svc: key.clone(),
                mode,
                change: change.clone(),
                decided_at: now,
            });
        }
        if let Some(entry) = self.svcs.get_mut(key) {
            if d.held && !entry.held_announced {
                notices.push(Notice::Held {
                    svc: key.clone(),
                    target: d.active,
                });
            }
            entry.held_announced = d.held;
        }
        for c in &d.pod_changes {
            let pod = ObjKey::new(key.ns.clone(), c.pod.clone());
            let evidence = self
                .entry(&pod)
                .map(|e| outputs::describe(e.health.last.as_ref()))
                .unwrap_or_default();
            notices.push(Notice::Pod {
                svc: key.clone(),
                mode,
                pod,
                fallback: c.fallback,
                to: c.to,
                detected_from: c.detected_from,
                evidence,
            });
        }
    }

    /// The desired state of one service: memberships, status with conditions, and the number of
    /// pods serving its traffic (also exported as a gauge).
    fn service_desired(&self, key: ObjKey, info: &ServiceInfo, d: &Decision) -> ServiceDesired {
        let mode = info.failover.mode;
        let evidence = self
            .inv
            .pods_of(&key)
            .filter_map(|p| {
                let e = self.entry(&p.key)?;
                let sticky = e
                    .sticky
                    .requests()
                    .map(|n| (e.sticky.sticky(Instant::now()), n));
                Some(outputs::evidence(&p.key.name, &e.health, sticky))
            })
            .collect();
        let (history, flaps) = self
            .svcs
            .get(&key)
            .map(|e| (e.history.clone(), e.state.flips.len()))
            .unwrap_or_default();
        let (mut status, mut conditions) = outputs::status_for(
            d,
            mode,
            info.failover.fallback.as_deref(),
            flaps,
            &history,
            evidence,
        );
        let analysis_only = info.analysis_only();
        if analysis_only {
            // Only the pods' verdicts are for the analysis. `FailedOver`, `Flapping`, the active
            // target (the `ACTIVE` column), panic and flaps speak of a failover the service has
            // not enabled.
            conditions.clear();
            status.active = None;
            status.panic = None;
            status.flaps = None;
        }
        let members: Vec<Member> = d
            .primary_members
            .iter()
            .map(|(n, m)| (n, false, *m))
            .chain(d.fallback_members.iter().map(|(n, m)| (n, true, *m)))
            .map(|(name, fallback, to)| Member {
                pod: ObjKey::new(key.ns.clone(), name.clone()),
                fallback,
                to,
            })
            .collect();
        let serving = members
            .iter()
            .filter(|m| {
                m.to == Membership::In && self.inv.pods.get(&m.pod).is_some_and(|p| p.ready)
            })
            .count();
        let serving = i64::try_from(serving).unwrap_or(i64::MAX);
        // One series per failover-enabled MicroService, none for a service only analysed.
        let series = [key.ns.as_str(), key.name.as_str()];
        if analysis_only {
            let _ = self.metrics.healthy_endpoints.remove_label_values(&series);
        } else {
            self.metrics
                .healthy_endpoints
                .with_label_values(&series)
                .set(serving);
        }
        ServiceDesired {
            label_key: labels::serves(&key.name),
            key,
            mode,
            members,
            reports_failover: true,
            status,
            traffic: None,
            conditions,
            serving,
        }
    }
}
