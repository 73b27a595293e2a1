//! What the plugin prints, from values already read: the service as a tree (`get`), the fleet as
//! a table (`list`) and the story of the last failover and rollback (`why`). Pure: no client, and
//! the current time comes in, so the output is a function of its inputs.

use std::fmt::Write as _;

use flotilla_crds::{conditions, labels, MicroService, PodHealth, RolloutPhase};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;

use crate::snapshot::{event_time, Snapshot};

/// Events shown under `get`'s tree.
pub const TREE_EVENTS: usize = 5;

/// `get NAME`: the MicroService, its Deployments and their pods, each pod with its verdict, then
/// the last Events.
pub fn tree(s: &Snapshot, now: Timestamp) -> String {
    let mut out = String::new();
    let name = s.name();
    let ns = s.msvc.namespace().unwrap_or_default();
    let _ = writeln!(out, "MicroService {ns}/{name}");
    let _ = writeln!(out, "  {}", summary(&s.msvc));
    if let Some(line) = failover_line(&s.msvc) {
        let _ = writeln!(out, "  {line}");
    }
    if let Some(line) = rollout_line(&s.msvc) {
        let _ = writeln!(out, "  {line}");
    }
    let verdicts = verdicts(&s.msvc);
    let serves = labels::serves(&name);
    let stable_pods: Vec<&Pod> = s.stable_pods().collect();
    let canary_pods: Vec<&Pod> = s.canary_pods().collect();
    let mut groups: Vec<(String, Vec<&Pod>)> = Vec::new();
    let rollout = s.msvc.status.as_ref().and_then(|st| st.rollout.as_ref());
    match &s.stable {
        Some(d) => {
            let revision = rollout.and_then(|r| r.stable_revision.as_deref());
            groups.push((deployment_line(d, "stable", revision), stable_pods));
        }
        None => groups.push(("Deployment (not created yet)".to_owned(), stable_pods)),
    }
    if let Some(d) = &s.canary {
        let revision = rollout.and_then(|r| r.canary_revision.as_deref());
        groups.push((deployment_line(d, "canary", revision), canary_pods));
    }
    let last = groups.len();
    for (i, (line, pods)) in groups.into_iter().enumerate() {
        let (branch, stem) = if i + 1 == last && s.events.is_empty() {
            ("└──", "    ")
        } else {
            ("├──", "│   ")
        };
        let _ = writeln!(out, "{branch} {line}");
        if pods.is_empty() {
            let _ = writeln!(out, "{stem}└── (no pods)");
        }
        for (j, pod) in pods.iter().enumerate() {
            let twig = if j + 1 == pods.len() {
                "└──"
            } else {
                "├──"
            };
            let _ = writeln!(
                out,
                "{stem}{twig} {}",
                pod_line(pod, &serves, &verdicts, now)
            );
        }
    }
    if !s.events.is_empty() {
        let _ = writeln!(out, "└── Events (last {TREE_EVENTS})");
        let from = s.events.len().saturating_sub(TREE_EVENTS);
        for e in &s.events[from..] {
            let _ = writeln!(out, "    {}", event_line(e, now));
        }
    }
    out
}

/// `list`: one row per MicroService.
pub fn list(msvcs: &[MicroService], all_namespaces: bool, now: Timestamp) -> String {
    let mut rows = vec![{
        let mut h = vec!["NAME", "READY", "TRAFFIC", "ROLLOUT", "REVISION", "AGE"];
        if all_namespaces {
            h.insert(0, "NAMESPACE");
        }
        h.into_iter().map(str::to_owned).collect::<Vec<_>>()
    }];
    for m in msvcs {
        let st = m.status.as_ref();
        let mut row = vec![
            m.name_any(),
            st.and_then(|s| s.ready.clone())
                .unwrap_or_else(|| "-".into()),
            traffic(m),
            st.and_then(|s| s.rollout.as_ref())
                .map(|r| r.phase.as_str().to_owned())
                .unwrap_or_else(|| "-".into()),
            st.and_then(|s| s.rollout.as_ref())
                .and_then(|r| r.stable_revision.clone())
                .unwrap_or_else(|| "-".into()),
            m.creation_timestamp()
                .map(|t| age(t.0, now))
                .unwrap_or_else(|| "-".into()),
        ];
        if all_namespaces {
            row.insert(0, m.namespace().unwrap_or_default());
        }
        rows.push(row);
    }
    table(&rows)
}

/// `why NAME`: when traffic last moved and why, and how the last release ended, each with its
/// evidence, then the Events that tell the story in order.
pub fn why(s: &Snapshot, now: Timestamp) -> String {
    let mut out = String::new();
    let name = s.name();
    let status = s.msvc.status.as_ref();
    let failover = status.and_then(|st| st.failover.as_ref());
    let _ = writeln!(out, "Traffic");
    match failover.and_then(|f| f.last_failover_time.as_ref()) {
        None => {
            let _ = writeln!(out, "  {name} has not failed over.");
        }
        Some(at) => {
            let f = failover.cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} ({}): failed over to {}: {}",
                at.0,
                age(at.0, now),
                f.fallback.as_deref().unwrap_or("the fallback"),
                f.last_failover_reason
                    .as_deref()
                    .unwrap_or("no reason recorded"),
            );
            match &f.last_failback_time {
                Some(back) if back.0 >= at.0 => {
                    let _ = writeln!(
                        out,
                        "  {} ({}): traffic returned to {name}",
                        back.0,
                        age(back.0, now)
                    );
                }
                _ => {
                    let _ = writeln!(out, "  traffic is still on the fallback");
                }
            }
            let unhealthy: Vec<&PodHealth> = f.pods.iter().filter(|p| !p.healthy).collect();
            if !unhealthy.is_empty() {
                let _ = writeln!(out, "  pods judged unhealthy now:");
                for p in unhealthy {
                    let _ = writeln!(out, "    {} {}", p.name, evidence(p));
                }
            }
        }
    }
    let _ = writeln!(out, "Release");
    match status.and_then(|st| st.rollout.as_ref()) {
        None => {
            let _ = writeln!(out, "  no guarded release recorded");
        }
        Some(r) => {
            let when = r
                .last_transition_time
                .as_ref()
                .map(|t| format!("{} ({}): ", t.0, age(t.0, now)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {when}{}{}",
                r.phase.as_str(),
                r.reason
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            );
            if let Some(m) = &r.message {
                let _ = writeln!(out, "  {m}");
            }
            if r.phase == RolloutPhase::RolledBack {
                if let Some(f) = &r.failed_revision {
                    let _ = writeln!(out, "  failed revision {f}; evidence:");
                }
                for e in &r.evidence {
                    let _ = writeln!(out, "    {}: {}", e.pod, e.observation);
                }
            }
        }
    }
    let _ = writeln!(out, "Events");
    if s.events.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for e in &s.events {
        let _ = writeln!(out, "  {}", event_line(e, now));
    }
    out
}

/// `ready 2/2 · Ready: AsExpected`, plus `Degraded` when it is true.
fn summary(m: &MicroService) -> String {
    let st = m.status.as_ref();
    let ready = st
        .and_then(|s| s.ready.clone())
        .unwrap_or_else(|| "-".into());
    let mut line = format!("ready {ready}");
    let conds = st.map(|s| s.conditions.as_slice()).unwrap_or_default();
    for c in conds {
        let shown = match c.type_.as_str() {
            conditions::READY => true,
            conditions::DEGRADED | conditions::FLAPPING => c.status == conditions::TRUE,
            _ => false,
        };
        if shown {
            let _ = write!(line, " · {}={} ({})", c.type_, c.status, c.reason);
        }
    }
    if st.and_then(|s| s.observed_generation) != m.metadata.generation {
        line.push_str(" · spec change not yet observed");
    }
    line
}

/// Where traffic goes: `primary`, `fallback (users-backup)`, `fallback (users-backup, held)`
/// during a maintenance hold, or `-` without failover.
fn traffic(m: &MicroService) -> String {
    let f = m.status.as_ref().and_then(|s| s.failover.as_ref());
    let held = if f.and_then(|f| f.held) == Some(true) {
        ", held"
    } else {
        ""
    };
    match f.and_then(|f| f.active) {
        Some(flotilla_crds::ActiveTarget::Fallback) => format!(
            "fallback ({}{held})",
            f.and_then(|f| f.fallback.as_deref()).unwrap_or("?")
        ),
        Some(t) => t.as_str().to_owned(),
        None => "-".to_owned(),
    }
}

fn failover_line(m: &MicroService) -> Option<String> {
    let f = m.status.as_ref()?.failover.as_ref()?;
    let mut line = match f.active {
        Some(_) => format!("traffic: {}", traffic(m)),
        None => "probed for the rollout's analysis (failover off)".to_owned(),
    };
    if let (Some(h), Some(t)) = (f.healthy_pods, f.total_pods) {
        let _ = write!(line, " · {h}/{t} pods healthy");
    }
    if f.observe_only == Some(true) && f.active.is_some() {
        line.push_str(" · observe only");
    }
    if m.spec.failover.hold_on_fallback && f.held != Some(true) {
        line.push_str(" · hold on fallback asked, not in force yet");
    }
    if f.panic == Some(true) {
        line.push_str(
            " · PANIC (every pod unhealthy, no healthy fallback: Kubernetes readiness decides)",
        );
    }
    Some(line)
}

fn rollout_line(m: &MicroService) -> Option<String> {
    let r = m.status.as_ref()?.rollout.as_ref()?;
    let mut line = format!("rollout: {}", r.phase.as_str());
    if let Some(v) = &r.stable_revision {
        let _ = write!(line, " · stable revision {v}");
    }
    if let Some(v) = &r.canary_revision {
        let _ = write!(line, " · canary revision {v}");
    }
    if r.phase == RolloutPhase::RolledBack {
        if let Some(v) = &r.failed_revision {
            let _ = write!(line, " · failed revision {v}");
        }
    }
    if let Some(reason) = &r.reason {
        let _ = write!(line, " · {reason}");
    }
    Some(line)
}

/// `Deployment users (stable, revision 0d4f3e9a1b) 3/3 ready`; the revision is the one the
/// Deployment's annotation carries (the canary's), else the one status records for its track,
/// and left out for a service that rolls without analysis.
fn deployment_line(d: &Deployment, track: &str, recorded: Option<&str>) -> String {
    let revision = d
        .annotations()
        .get(flotilla_crds::annotations::REVISION)
        .map(String::as_str)
        .or(recorded)
        .map(|r| format!(", revision {r}"))
        .unwrap_or_default();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    format!(
        "Deployment {} ({track}{revision}) {ready}/{want} ready",
        d.name_any()
    )
}

fn pod_line(pod: &Pod, serves: &str, verdicts: &[PodHealth], now: Timestamp) -> String {
    let name = pod.name_any();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == conditions::TRUE)
        .unwrap_or(false);
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    let mut line = format!(
        "Pod {name} {phase} {}",
        if ready { "ready" } else { "not-ready" }
    );
    if restarts > 0 {
        let _ = write!(line, " ({restarts} restarts)");
    }
    match pod.labels().get(serves).map(String::as_str) {
        Some(labels::SERVES_TRUE) => line.push_str(" · in traffic"),
        Some(labels::SERVES_FALSE) => line.push_str(" · OUT of traffic"),
        _ => {}
    }
    match verdicts.iter().find(|v| v.name == name) {
        Some(v) => {
            let _ = write!(
                line,
                " · verdict {} ({})",
                if v.healthy { "healthy" } else { "UNHEALTHY" },
                evidence(v)
            );
            if let Some(t) = &v.last_probe_time {
                let _ = write!(line, " {} ago", age(t.0, now));
            }
        }
        None => line.push_str(" · not probed"),
    }
    line
}

/// A verdict's evidence: the last probe, failures in a row, the 5xx ratio, sticky clients.
fn evidence(v: &PodHealth) -> String {
    let mut parts = vec![v
        .last_probe
        .clone()
        .unwrap_or_else(|| "no probe yet".into())];
    if let Some(n) = v.consecutive_failures.filter(|n| *n > 0) {
        parts.push(format!("{n} failed in a row"));
    }
    if let Some(r) = v.error_ratio {
        parts.push(format!("5xx ratio {r:.2}"));
    }
    if v.sticky_connections == Some(true) {
        parts.push("clients keep their connections".into());
    }
    parts.join(", ")
}

fn verdicts(m: &MicroService) -> Vec<PodHealth> {
    m.status
        .as_ref()
        .and_then(|s| s.failover.as_ref())
        .map(|f| f.pods.clone())
        .unwrap_or_default()
}

fn event_line(e: &Event, now: Timestamp) -> String {
    let when = event_time(e)
        .map(|t| age(t, now))
        .unwrap_or_else(|| "?".into());
    let count = e
        .series
        .as_ref()
        .map(|s| format!(" (x{})", s.count))
        .unwrap_or_default();
    format!(
        "{when:>5} {:<7} {}{count}: {}",
        e.type_.as_deref().unwrap_or("Normal"),
        e.reason.as_deref().unwrap_or("-"),
        e.note.as_deref().unwrap_or("")
    )
}

/// How long ago `t` was, as kubectl prints ages (`45s`, `3m`, `2h`, `4d`).
pub fn age(t: Timestamp, now: Timestamp) -> String {
    let s = now.as_second().saturating_sub(t.as_second()).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Left-aligned columns separated by three spaces, as `kubectl get` prints them.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<w$}", w = widths[c]))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
