//! The timeline: what happened to the fleet's traffic and releases (failovers, failbacks, pods
//! ejected and returned, rollouts started and how they ended), from the operator's Events, each
//! with the figures clients saw just before and after it. The figures are samples the dashboard
//! takes of each MicroService's status whenever its watch sees a change ([`History`]), so they
//! cover the time the dashboard has been running. Pure: events, samples and times come in.

use std::collections::{BTreeMap, VecDeque};

use flotilla_crds::{event_reasons, reasons, MicroService, TrafficFigures};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::events::v1::Event;
use serde::Serialize;

use crate::snapshot::event_time;

/// Samples kept per service: at one change every five seconds, an hour.
pub const HISTORY_LIMIT: usize = 720;

/// How far from an Event the samples that show its change are looked for: the operator writes
/// status a moment before it publishes the Event, this machine sees the write a moment later,
/// and the cluster's clock and this machine's may differ by a few seconds.
const SKEW: SignedDuration = SignedDuration::from_secs(5);

/// Without a sample that shows an Event's change, the figures "before" it are the last ones seen
/// at least this long before it.
const BEFORE_MARGIN: SignedDuration = SignedDuration::from_secs(1);

/// The figures "after" an Event are the last ones seen within this long after it: long enough
/// for the status writes that follow a switch (pod counts, membership) to settle.
const SETTLE: SignedDuration = SignedDuration::from_secs(15);

/// What kind of moment an Event marks; the page gives each its colour.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    Failover,
    Failback,
    Flapping,
    Ejection,
    Return,
    Rollout,
}

/// The kind of an Event with `reason`, or `None` when the timeline leaves it out.
pub fn kind_of(reason: &str) -> Option<Kind> {
    Some(match reason {
        event_reasons::FAILED_OVER => Kind::Failover,
        event_reasons::FAILED_BACK => Kind::Failback,
        event_reasons::FLAPPING => Kind::Flapping,
        event_reasons::POD_EJECTED => Kind::Ejection,
        event_reasons::POD_RETURNED => Kind::Return,
        event_reasons::ROLLOUT_STARTED
        | event_reasons::ROLLOUT_HALTED
        | event_reasons::UNDONE
        | event_reasons::PROMOTED
        | event_reasons::ROLLED_BACK
        | reasons::CONFIG_CHANGED => Kind::Rollout,
        _ => return None,
    })
}

/// What clients of one service could see at one moment, from its status.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// When the dashboard saw it.
    pub time: Timestamp,
    pub ready_replicas: Option<i32>,
    pub replicas: Option<i32>,
    pub healthy_pods: Option<i32>,
    pub total_pods: Option<i32>,
    /// `primary` or `fallback`.
    pub active: Option<&'static str>,
    pub held: bool,
    /// Requests per second, error ratio and p99 latency (`status.traffic`), when reported.
    pub requests: Option<TrafficFigures>,
}

impl Sample {
    /// The figures of `m` as seen at `time`.
    pub fn of(m: &MicroService, time: Timestamp) -> Sample {
        let st = m.status.as_ref();
        let f = st.and_then(|s| s.failover.as_ref());
        Sample {
            time,
            ready_replicas: st.and_then(|s| s.ready_replicas),
            replicas: st.and_then(|s| s.replicas),
            healthy_pods: f.and_then(|f| f.healthy_pods),
            total_pods: f.and_then(|f| f.total_pods),
            active: f.and_then(|f| f.active).map(|a| a.as_str()),
            held: f.and_then(|f| f.held) == Some(true),
            requests: st.and_then(|s| s.traffic.as_ref()).map(|t| TrafficFigures {
                requests_per_second: t.requests_per_second,
                error_ratio: t.error_ratio,
                p99_latency_millis: t.p99_latency_millis,
                pods: t.pods,
            }),
        }
    }

    fn same_figures(&self, other: &Sample) -> bool {
        Sample {
            time: other.time,
            ..self.clone()
        } == *other
    }
}

/// The samples of every service seen, oldest first, at most [`HISTORY_LIMIT`] each.
#[derive(Debug, Clone, Default)]
pub struct History {
    series: BTreeMap<(String, String), VecDeque<Sample>>,
}

impl History {
    /// Records `m`'s figures at `now` when they differ from the last ones recorded; whether they
    /// did.
    pub fn record(&mut self, m: &MicroService, now: Timestamp) -> bool {
        let key = (
            m.metadata.namespace.clone().unwrap_or_default(),
            m.metadata.name.clone().unwrap_or_default(),
        );
        let sample = Sample::of(m, now);
        let samples = self.series.entry(key).or_default();
        if samples
            .back()
            .is_some_and(|last| last.same_figures(&sample))
        {
            return false;
        }
        if samples.len() == HISTORY_LIMIT {
            samples.pop_front();
        }
        samples.push_back(sample);
        true
    }

    fn samples(&self, namespace: &str, name: &str) -> Option<&VecDeque<Sample>> {
        self.series.get(&(namespace.to_owned(), name.to_owned()))
    }
}

/// One moment of the timeline.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// When it last happened (an Event repeated in a series counts once, at its last time).
    pub time: Timestamp,
    pub namespace: String,
    pub service: String,
    pub reason: String,
    pub kind: Kind,
    /// A `Warning` Event.
    pub warning: bool,
    pub note: String,
    /// How often it happened (an Event series).
    pub count: i32,
    /// The figures last seen before it, when the dashboard was running then.
    pub before: Option<Sample>,
    /// The figures it left, once settled.
    pub after: Option<Sample>,
}

/// One service's samples, for the plot.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    pub namespace: String,
    pub service: String,
    pub samples: Vec<Sample>,
}

/// The timeline of the fleet, or of one service.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    /// Oldest first.
    pub entries: Vec<Entry>,
    pub series: Vec<Series>,
}

/// The timeline from `events` (any Events: those not about a MicroService, or of a reason the
/// timeline leaves out, are skipped) and the samples in `history`; only the service `only`
/// (namespace, name) when given.
pub fn timeline(events: &[Event], history: &History, only: Option<(&str, &str)>) -> Timeline {
    let wanted = |ns: &str, name: &str| only.is_none_or(|(n, s)| n == ns && s == name);
    let mut entries: Vec<Entry> = events
        .iter()
        .filter_map(|e| {
            let regarding = e.regarding.as_ref()?;
            if regarding.kind.as_deref() != Some(flotilla_crds::KIND) {
                return None;
            }
            let reason = e.reason.clone()?;
            let kind = kind_of(&reason)?;
            let service = regarding.name.clone()?;
            let namespace = regarding
                .namespace
                .clone()
                .or_else(|| e.metadata.namespace.clone())
                .unwrap_or_default();
            if !wanted(&namespace, &service) {
                return None;
            }
            let time = event_time(e)?;
            let samples = history.samples(&namespace, &service);
            let (before, after) = around(samples, time, kind);
            Some(Entry {
                time,
                namespace,
                service,
                reason,
                kind,
                warning: e.type_.as_deref() == Some("Warning"),
                note: e.note.clone().unwrap_or_default(),
                count: e.series.as_ref().map(|s| s.count).unwrap_or(1),
                before,
                after,
            })
        })
        .collect();
    entries.sort_by(|a, b| {
        (a.time, &a.namespace, &a.service, &a.reason).cmp(&(
            b.time,
            &b.namespace,
            &b.service,
            &b.reason,
        ))
    });
    let series = history
        .series
        .iter()
        .filter(|((ns, name), _)| wanted(ns, name))
        .map(|((namespace, service), samples)| Series {
            namespace: namespace.clone(),
            service: service.clone(),
            samples: samples.iter().cloned().collect(),
        })
        .collect();
    Timeline { entries, series }
}

/// The figures just before an Event of `kind` at `time` and those it left once settled. For a
/// failover, a failback, an ejection or a return they are found by what changed: the samples on
/// either side of the first one within [`SKEW`] of the Event that shows the change (the traffic on
/// the other side, fewer or more healthy pods), so that clock differences do not matter. For the
/// other Events, and when no sample shows the change, by time alone (see [`BEFORE_MARGIN`]).
fn around(
    samples: Option<&VecDeque<Sample>>,
    time: Timestamp,
    kind: Kind,
) -> (Option<Sample>, Option<Sample>) {
    let Some(samples) = samples else {
        return (None, None);
    };
    let after_end = time + SETTLE;
    let settled = |from: Timestamp| {
        samples
            .iter()
            .rev()
            .find(|s| s.time >= from && s.time <= after_end)
            .cloned()
    };
    let switch = samples
        .iter()
        .zip(samples.iter().skip(1))
        .filter(|(_, s)| s.time >= time - SKEW && s.time <= time + SKEW)
        .find(|(before, after)| shows(kind, before, after));
    if let Some((before, after)) = switch {
        return (Some(before.clone()), settled(after.time));
    }
    let before_end = time - BEFORE_MARGIN;
    let before = samples.iter().rev().find(|s| s.time <= before_end).cloned();
    let after = samples
        .iter()
        .rev()
        .find(|s| s.time > before_end && s.time <= after_end)
        .cloned();
    (before, after)
}

/// Whether going from `before` to `after` is the change an Event of `kind` announces.
fn shows(kind: Kind, before: &Sample, after: &Sample) -> bool {
    match kind {
        Kind::Failover => before.active != Some("fallback") && after.active == Some("fallback"),
        Kind::Failback => before.active != Some("primary") && after.active == Some("primary"),
        Kind::Ejection => after.healthy_pods < before.healthy_pods,
        Kind::Return => after.healthy_pods > before.healthy_pods,
        Kind::Flapping | Kind::Rollout => false,
    }
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
