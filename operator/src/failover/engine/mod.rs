//! The prober/decider task: keeps one health state machine per pod, schedules probes, turns
//! results into verdicts and verdicts into decisions, and publishes them as values for the writer.
//!
//! Task layout: one engine task on a dedicated single-threaded runtime owns all state (no locks). Each probe runs as its own short task
//! in a `JoinSet`, holding a semaphore permit; a probe ends within twice the probe timeout (the
//! readiness request, then an optional scrape), so no probe task outlives its timeouts. When all
//! permits are taken, a due probe is skipped until the pod's next period rather than queued.
//! Decisions are recomputed right after a verdict or the inventory changes, every `decide_every`
//! while a recovery or flap window runs, and once a second otherwise (to refresh evidence).
//! Runs on every replica so a new leader has warm verdicts, but only the leader's probes carry
//! verdicts (signed, see [`crate::verdict_keys`]) and only the writer writes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::decide::Target;
use super::error_rate::ErrorWindow;
use super::error_spans::ErrorSpans;
use super::inventory::{Inventory, ObjKey, ServiceInfo};
use super::metrics::{Metrics, ProbeResults};
use super::outputs::{Desired, Notice};
use super::pod_health::{Observation, PodHealth, Thresholds};
use super::probe::{HttpPaths, PodConn, ProbeClient, ProbeReport};
use super::readiness_watch::{LastLine, WatchEvent};
use super::scrape::ScrapeLimits;
use super::sticky::StickyWatch;
use super::traffic::{PublishPolicy, Publisher, TrafficWindow};
use crate::health::Heartbeat;
use crate::verdict_keys::VerdictKeys;
use crate::write::Leadership;

mod launch;
mod publish;
mod resume;
mod traffic;
mod watches;

use resume::{resume, SvcEntry};

/// Tunables of the engine task.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Probes in flight at once (across all pods). 512 covers 1,000 pods at a 500 ms period with
    /// millisecond answers many times over, and bounds sockets when many pods hang.
    pub max_in_flight: usize,
    /// After a probe result that goes against a pod's verdict (a failure of a healthy pod, a
    /// success of an unhealthy one), the pod is probed again this soon instead of a period
    /// later (never later than the period). 50 ms lets a default `failureThreshold` of 2 be
    /// reached about a twentieth of a second after the first failure (a failure must still be
    /// seen twice, 30 to 50 ms apart with the batch window, to eject), while a pod that fails
    /// once in a while costs one extra probe.
    pub confirm_after: Duration,
    /// How often every service is re-decided even without verdict changes.
    pub decide_every: Duration,
    /// Probes due within this much of the one that wakes the engine go out with it (but none
    /// earlier than a tenth of its period, the period's jitter), so the engine wakes for a batch
    /// of probes rather than for each one: at 1,000 pods and the default period, this cuts the
    /// prober's CPU by about 40 %. A probe launched early keeps its cadence.
    pub batch_window: Duration,
    /// Minimum time between two metrics scrapes of one pod.
    pub scrape_every: Duration,
    /// Metrics scrapes in flight at once. Each holds at most one line and a read buffer (see
    /// `scrape.rs`), so 32 bound scrape memory to a few MiB however large the bodies are; a
    /// scrape that finds no free slot is skipped for that round.
    pub max_scrapes_in_flight: usize,
    /// Byte, series and line caps of one scrape.
    pub scrape_limits: ScrapeLimits,
    /// Capacity of the notice queue to the writer; when full, notices are dropped (and counted).
    pub notice_capacity: usize,
    /// How long a fallback pod is told `ejected` after it leaves a primary's traffic (failback)
    /// and its label shows it, so clients of the primary that kept connections to it reconnect to the primary. It still
    /// serves its own Service: its own clients reconnect once, to the same pods. Two seconds are
    /// four default probe periods, each asking the pod again to close connections.
    pub fallback_drain: Duration,
    /// Beaten on every turn of the loop, so `/healthz` sees a wedged prober.
    pub heartbeat: Heartbeat,
    /// How verdicts are signed, and the leadership that allows sending them; `None` sends none.
    pub verdicts: Option<VerdictSigning>,
    /// Whether `stickyConnections: Restart` may pick pods to restart (the operator's
    /// `--sticky-restarts`); off, sticky pods are only reported.
    pub sticky_restarts: bool,
    /// Keep a readiness watch open on each pod that supports one (see the `readiness_watch`
    /// module).
    pub watch: bool,
    /// The heartbeat watched HTTP pods are asked for, and the quiet after which a gRPC watch's
    /// connection sends a PING; `None`: half the probe period.
    pub watch_heartbeat: Option<Duration>,
    /// The window of the request figures (`status.traffic.windowSeconds`). Thirty seconds
    /// hold a few hundred requests of a modest service, enough for a p99, and let a canary's
    /// figures settle well within a default analysis.
    pub traffic_window: Duration,
    /// Least time between two scrapes of a pod for the request figures, and the cadence of
    /// pods that are only scraped: six scrapes a window.
    pub traffic_scrape_every: Duration,
    /// When new request figures are published for the writer.
    pub traffic_publish: PublishPolicy,
}

/// What the engine needs to send verdicts.
#[derive(Debug, Clone)]
pub struct VerdictSigning {
    /// The operator's verdict keys.
    pub keys: Arc<VerdictKeys>,
    /// Verdicts go out only while this says the replica leads: a standby's view may differ
    /// from the leader's, and two voices would flip pods between `serving` and `ejected`.
    pub leadership: Leadership,
}

impl VerdictSigning {
    /// The keys to sign with now; `None` while this replica does not lead, so a standby (or a
    /// leader past its renew deadline) sends no verdict at all.
    pub fn keys_if_leading(&self) -> Option<Arc<VerdictKeys>> {
        self.leadership.is_leading().then(|| self.keys.clone())
    }
}

/// How long one signature of an unchanged verdict is reused. Signing costs tens of
/// microseconds and a probe period is 500 ms, so signatures are the bulk of what verdicts add
/// to the prober (see the failover benchmark's (d) with and without `--standby`); reused for
/// five seconds, well inside the pods' 30 s acceptance window, they are signed at a tenth of the
/// probe rate. A changed verdict is always signed at once.
const RESIGN_AFTER: Duration = Duration::from_secs(5);

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 512,
            confirm_after: Duration::from_millis(50),
            decide_every: Duration::from_millis(200),
            batch_window: Duration::from_millis(20),
            scrape_every: Duration::from_secs(1),
            max_scrapes_in_flight: 32,
            scrape_limits: ScrapeLimits::default(),
            notice_capacity: 1024,
            fallback_drain: Duration::from_secs(2),
            heartbeat: Heartbeat::default(),
            verdicts: None,
            sticky_restarts: false,
            watch: true,
            watch_heartbeat: None,
            traffic_window: Duration::from_secs(30),
            traffic_scrape_every: Duration::from_secs(5),
            traffic_publish: PublishPolicy::default(),
        }
    }
}

/// The engine's outputs.
#[derive(Debug)]
pub struct EngineOutputs {
    /// The latest desired state (level: the writer reconciles towards it).
    pub desired: watch::Receiver<Arc<Desired>>,
    /// One-off changes to announce (edge: Events and counters).
    pub notices: mpsc::Receiver<Notice>,
}

/// Per-pod state, with what a probe needs copied in so probing does no map lookups by name.
struct PodEntry {
    /// The pod's name: verdicts are signed for it.
    name: Arc<str>,
    /// The last signed verdict, reused until [`RESIGN_AFTER`].
    signed: Option<Signed>,
    svc: Arc<ServiceInfo>,
    addr: Option<SocketAddr>,
    /// The HTTP request targets for `addr`, built when the address or the paths change.
    http: Option<Arc<HttpPaths>>,
    /// The pod's kept-alive probe connection while no probe holds it.
    conn: Option<PodConn>,
    health: PodHealth,
    kubelet_ready: bool,
    window: ErrorWindow,
    /// Scrapes for the request figures.
    traffic: TrafficWindow,
    /// The error ratio at the watch's heartbeats, for pods whose lines carry counts.
    spans: ErrorSpans,
    /// Probes of this pod in flight: one, or two while a late heartbeat's probe goes out
    /// beside one that was already on its way.
    in_flight: u8,
    /// A late heartbeat found a probe in flight: the next launch goes out beside it.
    late_probe: bool,
    next_due: Instant,
    last_scrape: Option<Instant>,
    /// The traffic verdict sent with each readiness probe (`flotilla-traffic`), from the last
    /// decision of the pod's own service; `None` until decided or without failover.
    verdict: Option<&'static str>,
    /// Requests reaching the pod while it is ejected (sticky connections).
    sticky: StickyWatch,
    /// Whether the current sticky episode was announced (one Event per episode).
    sticky_announced: bool,
    /// Until when probes say `ejected` whatever `verdict` says: a fallback pod that just left a
    /// primary's traffic (failback) closes the connections the primary's clients opened to it.
    /// Set to the decision's time when the pod takes that traffic: it hears `serving` after.
    drain_until: Option<Instant>,
    /// The pod's readiness watch.
    watch: WatchSlot,
    /// The verdict (and whether it was signed) the last probe carried, and when it went out.
    probed: Option<((Option<&'static str>, bool), Instant)>,
}

/// Where a pod's readiness watch stands.
#[derive(Debug, Default)]
enum WatchSlot {
    /// None open; one is opened after the pod's next successful probe.
    #[default]
    Idle,
    /// Open; aborted when dropped (the pod went away, changed address or stopped answering).
    Open(WatchTask),
    /// The pod does not support it (until its address changes).
    Unsupported,
}

/// A running watch task, aborted on drop.
#[derive(Debug)]
struct WatchTask {
    generation: u64,
    handle: tokio::task::AbortHandle,
    /// The open-watches gauge, counting this one once the pod accepted it.
    counted: Option<prometheus::IntGauge>,
    /// The pod accepted it with heartbeats: its silence is noticed by the watch, so periodic
    /// probes are needed only for verdicts and scrapes.
    heartbeats: bool,
    /// The heartbeat asked for.
    heartbeat: Duration,
    /// When the pod was last heard on it.
    last_line: Arc<LastLine>,
    /// The last line after which the pod was probed for a late heartbeat (once per silence).
    late_told: Option<Instant>,
}

impl WatchTask {
    /// The pod has been silent since a heartbeat found late: its probes go out whatever the
    /// watch says, as the second, independent look at a pod that may hang.
    fn silent(&self) -> bool {
        self.late_told.is_some_and(|t| t == self.last_line.at())
    }
}

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.handle.abort();
        if let Some(g) = &self.counted {
            g.dec();
        }
    }
}

impl PodEntry {
    /// Whether a probe in flight holds the next one back: its answer comes first, unless a
    /// late heartbeat asked for one beside it.
    fn waits_for_probe(&self) -> bool {
        self.in_flight > 0 && !self.late_probe
    }

    fn ejected(&self) -> bool {
        self.verdict == Some(flotilla_crds::traffic::EJECTED)
    }

    /// The verdict a probe sent at `now` carries. A drained fallback pod is told `ejected`
    /// while it drains and `serving` after: a pod keeps the last verdict it heard, so one never
    /// told `serving` again would keep closing its clients' connections (HTTP/2 clients then
    /// never settle on it).
    fn verdict_at(&self, now: Instant) -> Option<&'static str> {
        match self.drain_until {
            Some(t) if now < t => Some(flotilla_crds::traffic::EJECTED),
            Some(_) => self.verdict.or(Some(flotilla_crds::traffic::SERVING)),
            None => self.verdict,
        }
    }

    /// Whether the last probe told the pod otherwise than it should hear now: `ejected` where
    /// it is not any more, or not where it is (a pod never probed: whether it is ejected). A
    /// fallback pod that has served or drained a primary's traffic is told every change,
    /// `serving` included: it may still hold an `ejected` from an earlier drain, perhaps
    /// another leader's, which it would otherwise keep for the verdict's lifetime.
    fn untold(&self, now: Instant) -> bool {
        let ejected = |v: Option<&'static str>| v == Some(flotilla_crds::traffic::EJECTED);
        let verdict = self.verdict_at(now);
        if self.drain_until.is_some() {
            return self.probed.is_none_or(|((said, _), _)| said != verdict);
        }
        let want = ejected(verdict);
        self.probed
            .map_or(want, |((said, _), _)| ejected(said) != want)
    }

    /// The signature header for `verdict`, signed anew when the verdict changed or the last
    /// signature is older than [`RESIGN_AFTER`].
    fn signature(&mut self, keys: &VerdictKeys, verdict: &'static str, now: Instant) -> Arc<str> {
        match &self.signed {
            Some(s) if s.verdict == verdict && now < s.until => s.header.clone(),
            _ => {
                let header: Arc<str> = keys.sign(&self.name, verdict).into();
                self.signed = Some(Signed {
                    verdict,
                    until: now + RESIGN_AFTER,
                    header: header.clone(),
                });
                header
            }
        }
    }
}

/// A watch with heartbeats, as the late-heartbeat check reads it.
#[derive(Debug)]
struct LateCheck {
    id: u64,
    generation: u64,
    /// When the pod was last heard on the watch.
    last_line: Arc<LastLine>,
    /// How long after a line the next one is late: a heartbeat and a tenth.
    late_after: Duration,
}

/// One signed verdict of a pod.
struct Signed {
    verdict: &'static str,
    until: Instant,
    header: Arc<str>,
}

struct Engine {
    inv: Arc<Inventory>,
    ids: HashMap<ObjKey, u64>,
    next_id: u64,
    /// Boxed: a pod's entry is most of a kilobyte, and the table keeps up to twice as many
    /// slots as entries.
    pods: HashMap<u64, Box<PodEntry>>,
    /// The pods of each service, for pulling their probes forward together.
    members: HashMap<ObjKey, Vec<u64>>,
    svcs: HashMap<ObjKey, SvcEntry>,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    client: ProbeClient,
    permits: Arc<Semaphore>,
    scrape_permits: Arc<Semaphore>,
    probes: JoinSet<(u64, ProbeReport)>,
    metrics: Metrics,
    results: ProbeResults,
    desired_tx: watch::Sender<Arc<Desired>>,
    notice_tx: mpsc::Sender<Notice>,
    /// When sticky pods were restarted within the last `sticky::GLOBAL_WINDOW` (the global cap).
    recent_restarts: std::collections::VecDeque<Instant>,
    /// Where readiness watches report, and the generation of the next one.
    watch_tx: mpsc::UnboundedSender<(u64, u64, WatchEvent)>,
    next_watch: u64,
    /// The watches with heartbeats, checked for a late one every [`LATE_CHECK_EVERY`]: a
    /// dense list read without visiting every pod's entry, pruned when a closed watch's
    /// silence is found.
    late_checks: Vec<LateCheck>,
    /// The request figures published per service reporting traffic, and when they were last
    /// computed (at most once a second, however often services are decided).
    traffic: HashMap<ObjKey, Publisher>,
    traffic_computed: Option<Instant>,
    cfg: EngineConfig,
}

/// Starts the engine on its own thread with a single-threaded runtime: the engine, its probe
/// tasks and the HTTP client's connection tasks then wake each other without cross-thread
/// hand-offs, which is most of the cost of a loopback probe, and probing cannot starve the
/// reconciler (or be starved by it). It stops when `inventory`'s sender is dropped.
pub fn spawn(
    inventory: watch::Receiver<Arc<Inventory>>,
    metrics: Metrics,
    cfg: EngineConfig,
) -> std::io::Result<(EngineOutputs, std::thread::JoinHandle<()>)> {
    let (desired_tx, desired) = watch::channel(Arc::new(Desired::default()));
    let (notice_tx, notices) = mpsc::channel(cfg.notice_capacity.max(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = std::thread::Builder::new()
        .name("flotilla-prober".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let (watch_tx, watch_rx) = mpsc::unbounded_channel();
                let engine = Engine {
                    inv: Arc::new(Inventory::default()),
                    ids: HashMap::new(),
                    next_id: 0,
                    pods: HashMap::new(),
                    members: HashMap::new(),
                    svcs: HashMap::new(),
                    heap: BinaryHeap::new(),
                    client: ProbeClient::new(),
                    permits: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
                    scrape_permits: Arc::new(Semaphore::new(cfg.max_scrapes_in_flight.max(1))),
                    probes: JoinSet::new(),
                    results: ProbeResults::new(&metrics.probes),
                    metrics,
                    desired_tx,
                    notice_tx,
                    recent_restarts: std::collections::VecDeque::new(),
                    watch_tx,
                    next_watch: 0,
                    late_checks: Vec::new(),
                    traffic: HashMap::new(),
                    traffic_computed: None,
                    cfg,
                };
                engine.run(inventory, watch_rx).await;
            });
        })?;
    Ok((EngineOutputs { desired, notices }, handle))
}

fn http_paths(addr: Option<SocketAddr>, svc: &ServiceInfo) -> Option<Arc<HttpPaths>> {
    let p = &svc.probe;
    HttpPaths::new(addr?, &p.readiness_path, &p.metrics_path).map(Arc::new)
}

/// How often a steady pod whose watch has heartbeats is probed anyway, to repeat its verdict.
const WATCHED_PROBE_EVERY: Duration = Duration::from_secs(2);

/// The heartbeat asked of a watched HTTP pod (and a gRPC watch's PING interval): half the
/// probe period (250 ms at the default 500 ms), at least 50 ms. A heartbeat a tenth of a
/// heartbeat late has the pod probed at once (see [`LATE_CHECK_EVERY`]), beside a probe already
/// in flight, and that probe waits at most a heartbeat; a pod that hangs then fails that
/// probe (525 to 550 ms after its last line) and the watch's silence (the heartbeat later than
/// the timeout: 550 ms with the default timeout of 300 ms): two failures, the default
/// threshold. The probe's timeout leaves the watch open so that its silence still counts. A
/// gRPC pod leaves a PING unanswered within a heartbeat and a timeout, and its reconnect a
/// timeout later. Each heartbeat costs the prober a wake-up and a read of a line, about half of
/// what a probe costs: at half the period, heartbeats and the thinned periodic probes together
/// cost what probing every period did (a quarter of the period, measured, costs twice as much).
fn default_heartbeat(period: Duration) -> Duration {
    (period / 2).max(Duration::from_millis(50))
}

/// How often the watches are checked for late heartbeats: a tenth of the default heartbeat.
const LATE_CHECK_EVERY: Duration = Duration::from_millis(25);

fn jittered(period: Duration) -> Duration {
    period.mul_f64(rand::rng().random_range(0.9..1.1))
}

impl Engine {
    async fn run(
        mut self,
        mut inventory: watch::Receiver<Arc<Inventory>>,
        mut watches: mpsc::UnboundedReceiver<(u64, u64, WatchEvent)>,
    ) {
        let first = inventory.borrow_and_update().clone();
        self.apply_inventory(first);
        // Decided at once, as after every later inventory change: a service whose pods the
        // kubelet calls Ready counts as having been healthy (`ever_ok`) before any probe. Left
        // to the first verdict change, a service all of whose pods fail their first probes
        // together would look as if it never started, and would never fail over.
        self.decide_all(Instant::now());
        let mut late = tokio::time::interval(LATE_CHECK_EVERY);
        late.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(self.cfg.decide_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = || Instant::now() + Duration::from_secs(3600);
        let mut timer = std::pin::pin!(tokio::time::sleep_until(far().into()));
        let mut last_decide = Instant::now();
        loop {
            self.cfg.heartbeat.beat();
            let next_due = self.heap.peek().map_or_else(far, |Reverse((t, _))| *t);
            if timer.deadline() != next_due.into() {
                timer.as_mut().reset(next_due.into());
            }
            let mut decide_now = false;
            tokio::select! {
                changed = inventory.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let inv = inventory.borrow_and_update().clone();
                    self.apply_inventory(inv);
                    decide_now = true;
                }
                Some(joined) = self.probes.join_next(), if !self.probes.is_empty() => {
                    if let Ok((id, rep)) = joined {
                        decide_now |= self.on_report(id, rep);
                    }
                    // Take every other finished probe too, then decide once.
                    while let Some(joined) = self.probes.try_join_next() {
                        if let Ok((id, rep)) = joined {
                            decide_now |= self.on_report(id, rep);
                        }
                    }
                }
                Some((id, generation, event)) = watches.recv() => {
                    decide_now |= self.on_watch(id, generation, event);
                    while let Ok((id, generation, event)) = watches.try_recv() {
                        decide_now |= self.on_watch(id, generation, event);
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    self.launch_due(now, now + self.cfg.batch_window);
                }
                _ = late.tick() => {
                    self.probe_late(Instant::now());
                }
                _ = tick.tick() => {
                    // Time alone matters only during a recovery window or a flap window; the
                    // rest is refreshed (evidence for status) once a second.
                    decide_now = self.time_sensitive() || last_decide.elapsed() >= Duration::from_secs(1);
                }
            }
            if decide_now {
                last_decide = Instant::now();
                self.decide_all(last_decide);
            }
        }
        self.probes.abort_all();
    }

    fn time_sensitive(&self) -> bool {
        self.svcs
            .values()
            .any(|e| e.state.active == Target::Fallback || !e.state.flips.is_empty())
    }

    fn entry(&self, key: &ObjKey) -> Option<&PodEntry> {
        self.pods.get(self.ids.get(key)?).map(|e| &**e)
    }

    fn entry_mut(&mut self, key: &ObjKey) -> Option<&mut PodEntry> {
        self.pods.get_mut(self.ids.get(key)?).map(|e| &mut **e)
    }

    fn apply_inventory(&mut self, inv: Arc<Inventory>) {
        let now = Instant::now();
        let services: HashMap<&ObjKey, Arc<ServiceInfo>> = inv
            .services
            .iter()
            .map(|(k, s)| (k, Arc::new(s.clone())))
            .collect();
        let pods = &mut self.pods;
        self.ids.retain(|k, id| {
            let keep = inv.pods.contains_key(k);
            if !keep {
                pods.remove(id);
            }
            keep
        });
        // Pods to open a readiness watch on: new ones and moved ones the kubelet calls Ready
        // (others get one after their first successful probe).
        let mut to_watch = Vec::new();
        for (key, p) in &inv.pods {
            let Some(svc) = services.get(&ObjKey::new(key.ns.clone(), p.service.clone())) else {
                continue;
            };
            let addr = p.ip.map(|ip| SocketAddr::new(ip, svc.probe.port));
            let known = self.ids.get(key).copied();
            if let Some((id, entry)) = known.and_then(|id| Some((id, self.pods.get_mut(&id)?))) {
                if p.ready && !entry.kubelet_ready {
                    entry.health.kubelet_became_ready();
                }
                entry.kubelet_ready = p.ready;
                if entry.svc.scrape_only != svc.scrape_only {
                    // Probed from now on, or only scraped: the next visit keeps to the new
                    // cadence, and only probed pods keep a readiness watch.
                    let next = now
                        + launch::cadence(svc, &self.cfg)
                            .mul_f64(rand::rng().random_range(0.0..1.0));
                    if next < entry.next_due {
                        entry.next_due = next;
                        self.heap.push(Reverse((next, id)));
                    }
                    entry.watch = WatchSlot::Idle;
                    if p.ready && !svc.scrape_only {
                        to_watch.push(id);
                    }
                }
                if entry.addr != addr || entry.svc.probe != svc.probe {
                    entry.http = http_paths(addr, svc);
                    entry.conn = None;
                    entry.watch = WatchSlot::Idle;
                    if p.ready {
                        to_watch.push(id);
                    }
                }
                entry.svc = svc.clone();
                entry.addr = addr;
                continue;
            }
            let first =
                now + launch::cadence(svc, &self.cfg).mul_f64(rand::rng().random_range(0.0..1.0));
            let id = self.next_id;
            self.next_id += 1;
            self.ids.insert(key.clone(), id);
            self.pods.insert(
                id,
                Box::new(PodEntry {
                    name: key.name.as_str().into(),
                    signed: None,
                    svc: svc.clone(),
                    addr,
                    http: http_paths(addr, svc),
                    conn: None,
                    health: PodHealth::new(p.ready),
                    kubelet_ready: p.ready,
                    window: ErrorWindow::new(svc.failover.error_rate_window),
                    traffic: TrafficWindow::new(self.cfg.traffic_window),
                    spans: ErrorSpans::default(),
                    in_flight: 0,
                    late_probe: false,
                    next_due: first,
                    last_scrape: None,
                    verdict: None,
                    sticky: StickyWatch::default(),
                    sticky_announced: false,
                    drain_until: None,
                    watch: WatchSlot::Idle,
                    probed: None,
                }),
            );
            self.heap.push(Reverse((first, id)));
            if p.ready && !svc.scrape_only {
                to_watch.push(id);
            }
        }
        for id in to_watch {
            self.open_watch(id);
        }
        self.members.clear();
        for (key, id) in &self.ids {
            if let Some(svc) = inv.pods.get(key).map(|p| &p.service) {
                self.members
                    .entry(ObjKey::new(key.ns.clone(), svc.clone()))
                    .or_default()
                    .push(*id);
            }
        }
        let metrics = &self.metrics;
        self.svcs.retain(|k, _| {
            let keep = inv.services.get(k).is_some_and(ServiceInfo::decided);
            if !keep {
                let _ = metrics
                    .healthy_endpoints
                    .remove_label_values(&[k.ns.as_str(), k.name.as_str()]);
            }
            keep
        });
        for svc in inv.services.values().filter(|s| s.decided()) {
            self.svcs
                .entry(svc.key.clone())
                .or_insert_with(|| resume(svc, &inv));
        }
        self.traffic
            .retain(|k, _| inv.services.get(k).is_some_and(|s| s.report_traffic));
        for svc in inv.services.values().filter(|s| s.report_traffic) {
            self.traffic
                .entry(svc.key.clone())
                .or_insert_with(|| Publisher::resume(svc.traffic.clone(), now));
        }
        self.inv = inv;
    }

    /// Feeds a probe report into the pod's state machine; `true` when its verdict changed.
    fn on_report(&mut self, id: u64, mut rep: ProbeReport) -> bool {
        let Some(entry) = self.pods.get_mut(&id) else {
            return false;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        // Keep the connection only if the pod still has the address it was opened to.
        if let (addr, Some(conn)) = (rep.conn.0, rep.conn.1.take()) {
            if entry.addr == Some(addr) {
                entry.conn = Some(conn);
            }
        }
        let svc = entry.svc.clone();
        let mut api_requests = None;
        // A rollout analysis judges the canary by its 5xx ratio: a new ratio is decided and
        // reported now, not at the once-a-second refresh.
        let mut analysed_ratio_moved = false;
        if let Some(scraped) = rep.scrape {
            let scraped = scraped
                .map_err(|r| {
                    self.metrics
                        .scrape_rejected
                        .with_label_values(&[r.label()])
                        .inc();
                })
                .ok();
            entry.last_scrape = Some(rep.at);
            // A scrape that failed says nothing about the traffic: the figures keep their window.
            let (counts, traffic) = scraped.map_or((None, None), |s| (s.counts, Some(s.traffic)));
            if let Some(sample) = traffic.filter(|_| svc.report_traffic) {
                entry.traffic.record(rep.at, sample);
            }
            api_requests = counts.map(|c| c.total - c.probes);
            // The pod's error ratio is failover evidence: of pods whose metrics failover reads.
            if svc.failover.scrape_metrics || entry.ejected() {
                let ratio = entry.window.record(rep.at, counts);
                analysed_ratio_moved = svc.analysing && ratio != entry.health.error_ratio;
                entry.health.set_error_ratio(ratio);
            }
        }
        if svc.scrape_only {
            // Not probed: there is no verdict to judge.
            return false;
        }
        let ejected = entry.ejected();
        entry.sticky.record(rep.at, ejected, api_requests);
        // Failing on error rate: by the scraped window, or by the heartbeat spans while they
        // still say so (an ejected pod gets no traffic, so they fall silent a window later).
        let spans = svc.failover.max_error_rate.and_then(|max| {
            let (n, window) = (svc.probe.failure_threshold, svc.failover.error_rate_window);
            entry.spans.failing(n, max, rep.at, window)
        });
        let obs = match (
            rep.observation,
            svc.failover.max_error_rate,
            entry.health.error_ratio,
            spans,
        ) {
            (Observation::Success, _, _, Some(r)) => Observation::ErrorRate(r),
            (Observation::Success, Some(max), Some(r), _) if r > max => Observation::ErrorRate(r),
            (obs, ..) => obs,
        };
        self.metrics
            .probe_duration
            .observe(rep.latency.as_secs_f64());
        // A probe that times out or cannot connect also closes the pod's watch, which may be
        // stuck on a pod that hangs; a successful probe opens one. A watch with heartbeats is
        // left to its own silence, which ends it and is the next failure of a pod that hangs:
        // closed here, that failure would be lost and wait for another probe's timeout.
        let heartbeats = matches!(&entry.watch, WatchSlot::Open(t) if t.heartbeats);
        match obs {
            Observation::Timeout if heartbeats => {}
            Observation::Timeout | Observation::ConnectError => entry.watch = WatchSlot::Idle,
            Observation::Success => self.open_watch(id),
            _ => {}
        }
        // A verdict decided while this probe was out (it carried the one before) is told now,
        // not at the pod's next turn: a pod closes its clients' kept connections when it hears
        // `ejected`, so every turn waited is time they keep reaching it.
        let now = Instant::now();
        if self.pods.get(&id).is_some_and(|e| e.untold(now)) {
            self.probe_now(id, now);
        }
        let changed = self.observe(id, obs, rep.at, false);
        changed || analysed_ratio_moved
    }

    /// Feeds one readiness observation into the pod's state machine (a probe's, or a watch's,
    /// `decisive` when the pod itself says it is not ready); `true` when its verdict changed.
    fn observe(&mut self, id: u64, obs: Observation, at: Instant, decisive: bool) -> bool {
        let Some(entry) = self.pods.get_mut(&id) else {
            return false;
        };
        let svc = entry.svc.clone();
        self.results.get(obs.label()).inc();
        let th = Thresholds {
            failure: if decisive {
                1
            } else {
                svc.probe.failure_threshold
            },
            success: svc.probe.success_threshold,
        };
        let was_healthy = entry.health.healthy;
        let failed = !obs.is_success();
        let changed = entry.health.observe(obs, at, th);
        let first_failure = was_healthy && failed && entry.health.consecutive_failures == 1;
        // A result that goes against the verdict is confirmed soon rather than a period later,
        // so a threshold is reached in a fraction of a period. Only contested pods are probed
        // early: a steadily healthy (or steadily failing) pod sees no extra probes.
        let h = &entry.health;
        let contested = (h.healthy && h.consecutive_failures > 0)
            || (!h.healthy && h.consecutive_successes > 0 && entry.kubelet_ready);
        if contested {
            let confirm = at + self.cfg.confirm_after.min(svc.probe.period);
            if confirm < entry.next_due {
                entry.next_due = confirm;
                self.heap.push(Reverse((confirm, id)));
            }
        }
        if first_failure {
            self.suspect_service(&svc, id, at);
        }
        changed
    }

    /// Probes the pod now instead of at its turn (its period restarts from this probe). A pod
    /// with a probe in flight is left alone: that probe's answer comes first (unless a late
    /// heartbeat asked for one beside it).
    pub(super) fn probe_now(&mut self, id: u64, now: Instant) {
        let Some(e) = self.pods.get_mut(&id) else {
            return;
        };
        if e.waits_for_probe() || e.svc.scrape_only {
            return;
        }
        if e.next_due > now {
            e.next_due = now;
            self.heap.push(Reverse((now, id)));
        }
    }

    /// A healthy pod of `svc` just failed a probe: the service's other healthy pods are probed
    /// now instead of up to a period later. Faults are often shared (a bad dependency, a bad
    /// config), and failing over needs every primary pod judged: waiting for each pod's own
    /// turn would make the switch take as long as the slowest pod's phase, close to a whole
    /// period, where this makes it the first failing pod's. The pulled-forward probes are not
    /// extra ones (each pod's period restarts from it), and this happens at most once per
    /// period per service, so a pod that fails now and then cannot keep its siblings busy.
    fn suspect_service(&mut self, svc: &ServiceInfo, failed: u64, now: Instant) {
        let Some(state) = self.svcs.get_mut(&svc.key) else {
            return;
        };
        if state
            .last_suspicion
            .is_some_and(|t| now.saturating_duration_since(t) < svc.probe.period)
        {
            return;
        }
        state.last_suspicion = Some(now);
        for &id in self.members.get(&svc.key).into_iter().flatten() {
            let Some(e) = self.pods.get_mut(&id) else {
                continue;
            };
            let steady = e.health.healthy && e.health.consecutive_failures == 0;
            if id != failed && steady && e.in_flight == 0 && e.next_due > now {
                e.next_due = now;
                self.heap.push(Reverse((now, id)));
            }
        }
    }
}
