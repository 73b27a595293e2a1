//! What one run measured, and the tables printed from all runs: per fault kind, each client's
//! error window with the readiness watch on and off and their ratio, then where the time of the
//! failover went. Pure: records in, text out.

use std::fmt::Write as _;

use crate::faults::Fault;

/// The client kinds, in the order their outcomes are recorded.
pub const CLIENTS: [&str; 5] = ["new-connection", "pooled", "http2", "grpc", "new-conn sent"];

/// The two primaries, in the order their endpoint changes are recorded.
pub const SERVICES: [&str; 2] = ["users", "orders"];

/// Steps of a failover after the fault, in seconds.
pub const STEPS: [&str; 5] = [
    "known (first failing observation)",
    "decided",
    "written (label writes acknowledged)",
    "endpoints changed (both services)",
    "clients all succeed again",
];

/// One fault injected and recovered from.
#[derive(Debug, Clone)]
pub struct Run {
    pub fault: Fault,
    /// Whether the operator ran with its readiness watch.
    pub watch: bool,
    /// Per client: error window (first to last failed request), in seconds.
    pub window: [f64; 5],
    /// Per client: failed requests.
    pub failed: [usize; 5],
    /// Per client: from the fault to the end of the last failed request (0 when none failed).
    pub last_failure: [f64; 5],
    /// Per [`SERVICES`] entry: from the fault to its endpoints changed, in seconds.
    pub endpoints: [f64; 2],
    /// [`STEPS`] from the fault, in seconds (NaN when unknown).
    pub steps: [f64; 5],
    /// Mean of the run's `flotilla_failover_detection_seconds` observations.
    pub detection: f64,
    /// Whether the operator failed back before every client succeeded again (bad answers: with
    /// the fault still on; a crash: once the kubelet restarted the pods): the clients' errors
    /// are counted up to the failback, and the steps after the endpoints change are unknown.
    pub failed_back: bool,
    /// Whether a hang ended (SIGCONT) before every client succeeded again: clients were stuck
    /// on the hung pods, and their windows end with the hang.
    pub hang_ended_first: bool,
}

/// The `p`th percentile (nearest rank) of the finite values; NaN when there are none.
pub fn pct(values: impl IntoIterator<Item = f64>, p: f64) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ratio(off: f64, on: f64) -> String {
    if on > 0.0 && off.is_finite() {
        format!("{:.2}", off / on)
    } else if off == 0.0 && on == 0.0 {
        "=".into()
    } else {
        "-".into()
    }
}

fn secs(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}s")
    } else {
        "n/a".into()
    }
}

/// One line for a finished run.
pub fn run_line(index: usize, r: &Run) -> String {
    let mut s = format!(
        "{} watch {} run {index}:",
        r.fault,
        if r.watch { "on " } else { "off" }
    );
    for (i, name) in CLIENTS.iter().enumerate() {
        let _ = write!(s, " {name} {:.3}s/{}", r.window[i], r.failed[i]);
    }
    let _ = write!(
        s,
        "; known {} decided {} written {} endpoints {} ({} {}, {} {}) clients ok {}",
        secs(r.steps[0]),
        secs(r.steps[1]),
        secs(r.steps[2]),
        secs(r.steps[3]),
        SERVICES[0],
        secs(r.endpoints[0]),
        SERVICES[1],
        secs(r.endpoints[1]),
        secs(r.steps[4]),
    );
    if r.failed_back {
        s.push_str(" (failed back before every client succeeded: measured up to the failback)");
    }
    if r.hang_ended_first {
        s.push_str(" (clients still failing when the hang ended)");
    }
    s
}

/// The summary of one fault kind over all its runs.
pub fn summary(fault: Fault, runs: &[Run], note: &str) -> String {
    let of = |watch: bool| -> Vec<&Run> {
        runs.iter()
            .filter(|r| r.fault == fault && r.watch == watch)
            .collect()
    };
    let (on, off) = (of(true), of(false));
    let mut s = format!(
        "== {fault}: {} runs with the readiness watch on, {} off{note}\n",
        on.len(),
        off.len()
    );
    let _ = writeln!(
        s,
        "  {:<16} {:>21} {:>21} {:>13} {:>15} {:>23}",
        "client error window",
        "watch on p50 / p99",
        "watch off p50 / p99",
        "off/on p50 p99",
        "failed on / off",
        "fault→last failure p99"
    );
    for (i, name) in CLIENTS.iter().enumerate() {
        let w = |rs: &[&Run], p| pct(rs.iter().map(|r| r.window[i]), p);
        let n = |rs: &[&Run]| pct(rs.iter().map(|r| r.failed[i] as f64), 50.0);
        let last = |rs: &[&Run]| pct(rs.iter().map(|r| r.last_failure[i]), 99.0);
        let _ = writeln!(
            s,
            "  {name:<16} {:>10} / {:>8} {:>10} / {:>8} {:>6} {:>6} {:>7.0} / {:<5.0} {:>11} / {:<8}",
            secs(w(&on, 50.0)),
            secs(w(&on, 99.0)),
            secs(w(&off, 50.0)),
            secs(w(&off, 99.0)),
            ratio(w(&off, 50.0), w(&on, 50.0)),
            ratio(w(&off, 99.0), w(&on, 99.0)),
            n(&on),
            n(&off),
            secs(last(&on)),
            secs(last(&off)),
        );
    }
    let _ = writeln!(
        s,
        "  {:<40} {:>21} {:>21}",
        "from the fault to", "watch on p50 / p99", "watch off p50 / p99"
    );
    let row = |s: &mut String, name: &str, f: &dyn Fn(&Run) -> f64| {
        let p = |rs: &[&Run], q| pct(rs.iter().map(|r| f(r)), q);
        let _ = writeln!(
            s,
            "  {name:<40} {:>10} / {:>8} {:>10} / {:>8}",
            secs(p(&on, 50.0)),
            secs(p(&on, 99.0)),
            secs(p(&off, 50.0)),
            secs(p(&off, 99.0)),
        );
    };
    for (i, name) in STEPS.iter().enumerate() {
        row(&mut s, name, &|r| r.steps[i]);
        if i == 3 {
            for (j, svc) in SERVICES.iter().enumerate() {
                row(&mut s, &format!("  endpoints changed: {svc}"), &|r| {
                    r.endpoints[j]
                });
            }
        }
    }
    row(&mut s, "detection (first failure → written)", &|r| {
        r.detection
    });
    let back = runs
        .iter()
        .filter(|r| r.fault == fault && r.failed_back)
        .count();
    if back > 0 {
        let _ = writeln!(
            s,
            "  ({back} runs failed back before every client succeeded again: errors counted up \
             to the failback, later steps unknown)"
        );
    }
    let stuck = runs
        .iter()
        .filter(|r| r.fault == fault && r.hang_ended_first)
        .count();
    if stuck > 0 {
        let _ = writeln!(
            s,
            "  ({stuck} runs had clients still failing when the hang ended: their windows end with the hang)"
        );
    }
    s
}
