// The Flotilla dashboard's page: draws the views the server pushes over one EventSource
// (`fleet`, `service`, `timeline`), and nothing else. No libraries, no timers: the browser's
// EventSource reconnects by itself after the delay the server asks for.
"use strict";

const state = { fleet: null, service: null, timeline: null, selected: null, source: null };

const KINDS = {
  failover: "failed over",
  failback: "failed back",
  flapping: "flapping",
  ejection: "pod ejected",
  return: "pod returned",
  rollout: "rollout",
};

// An element with attributes and children (strings become text nodes: nothing the cluster
// sends is ever parsed as HTML).
function el(tag, attrs, ...children) {
  const svg = ["svg", "g", "rect", "circle", "line", "text", "title", "polyline"].includes(tag);
  const node = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const key = (s) => `${s.namespace}/${s.name}`;
const $ = (id) => document.getElementById(id);

function time(t) {
  const d = new Date(t);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

function percent(r) {
  return `${(r * 100).toFixed(r < 0.1 ? 1 : 0)}%`;
}

// `status.traffic` (or a sample's copy of it): absent figures stay absent, never 0.
function requests(r) {
  if (!r) return "—";
  const has = (v) => v !== null && v !== undefined;
  const parts = [];
  if (has(r.requestsPerSecond)) parts.push(`${r.requestsPerSecond} req/s`);
  if (has(r.errorRatio)) parts.push(`${percent(r.errorRatio)} errors`);
  if (has(r.p99LatencyMillis)) parts.push(`p99 ${r.p99LatencyMillis} ms`);
  return parts.join(" · ") || "—";
}

function requestsCell(r) {
  if (!r) return el("span", { class: "quiet" }, "—");
  const cls = r.errorRatio > 0.05 ? "bad" : "";
  const canary = r.canary ? ` · canary: ${requests(r.canary)}` : "";
  const window = r.windowSeconds ? `over ${r.windowSeconds}s from ${r.pods ?? "?"} pods` : "";
  return el("span", { class: cls, title: window }, requests(r) + canary);
}

function traffic(t) {
  if (!t) return [el("span", { class: "quiet" }, "not probed")];
  const out = [];
  if (t.active === "fallback") {
    out.push(el("span", { class: "pill bad" }, `fallback ${t.fallback || ""}${t.held ? " (held)" : ""}`));
  } else if (t.active === "primary") {
    out.push(el("span", { class: "pill ok" }, "primary"));
  } else {
    out.push(el("span", { class: "quiet" }, "probed for analysis"));
  }
  if (t.healthyPods !== null && t.totalPods !== null && t.healthyPods !== undefined) {
    const cls = t.healthyPods < t.totalPods ? "warn" : "quiet";
    out.push(el("span", { class: `small ${cls}` }, ` ${t.healthyPods}/${t.totalPods} healthy`));
  }
  return out;
}

function readiness(s) {
  const c = s.readyCondition;
  const cls = !c ? "quiet" : c.status === "True" ? "ok" : "warn";
  return [
    el("span", { class: `pill ${cls}`, title: c ? `${c.reason}: ${c.message}` : "" }, s.ready || "—"),
  ];
}

function rollout(r) {
  if (!r) return "—";
  const cls = r.phase === "RolledBack" ? "bad" : r.phase === "Analyzing" ? "info" : "quiet";
  return [
    el("span", { class: cls }, r.phase),
    r.reason ? el("span", { class: "small quiet" }, ` ${r.reason}`) : null,
  ];
}

function notes(s) {
  const out = [];
  if (s.degraded) out.push(el("span", { class: "pill bad", title: s.degraded.message }, `Degraded: ${s.degraded.reason}`));
  if (s.traffic && s.traffic.panic) out.push(el("span", { class: "pill bad" }, "panic"));
  if (s.traffic && s.traffic.observeOnly && s.traffic.active) out.push(el("span", { class: "pill quiet" }, "observe only"));
  if (!s.specObserved) out.push(el("span", { class: "pill quiet" }, "spec change pending"));
  return out;
}

function renderFleet() {
  const f = state.fleet;
  $("scope").textContent = `fleet of ${f.scope}`;
  const errors = $("errors");
  errors.hidden = f.errors.length === 0;
  errors.replaceChildren(...f.errors.map((e) => el("div", {}, e)));
  const rows = f.services.map((s) =>
    el(
      "tr",
      {
        "data-service": key(s),
        "data-ready": s.ready || "",
        "data-active": (s.traffic && s.traffic.active) || "",
        class: key(s) === state.selected ? "selected" : null,
      },
      el("td", { "data-field": "name" }, el("span", { class: "name" }, s.name), el("span", { class: "ns" }, ` ${s.namespace}`)),
      el("td", { "data-field": "ready" }, readiness(s)),
      el("td", { "data-field": "traffic" }, traffic(s.traffic)),
      el("td", { "data-field": "rollout" }, rollout(s.rollout)),
      el("td", { "data-field": "requests" }, requestsCell(s.requests)),
      el("td", { "data-field": "notes" }, notes(s)),
    ),
  );
  for (const r of rows) r.addEventListener("click", () => select(r.dataset.service));
  $("fleet").tBodies[0].replaceChildren(...rows);
  $("fleet-empty").hidden = rows.length > 0;
  if (!state.selected && f.services.length > 0) select(key(f.services[0]));
}

function evidence(v) {
  if (!v) return "";
  const parts = [v.lastProbe || "no probe yet"];
  if (v.consecutiveFailures) parts.push(`${v.consecutiveFailures} failed in a row`);
  if (v.errorRatio !== null && v.errorRatio !== undefined) parts.push(`5xx ${percent(v.errorRatio)}`);
  if (v.stickyConnections) parts.push("clients keep their connections");
  if (v.requestsWhileEjected) parts.push(`${v.requestsWhileEjected} requests while out`);
  if (v.lastProbeTime) parts.push(`at ${time(v.lastProbeTime)}`);
  return parts.join(", ");
}

function renderService() {
  const v = state.service;
  const body = $("pods").tBodies[0];
  if (!v || v.error) {
    $("service-title").textContent = "Service";
    $("service-summary").textContent = v ? v.error : "Select a service in the fleet.";
    body.replaceChildren();
    return;
  }
  const s = v.service;
  $("service-title").textContent = `Service ${s.namespace}/${s.name}`;
  const t = s.traffic;
  const summary = [`ready ${s.ready || "—"}`];
  if (t && t.active) summary.push(`traffic on ${t.active === "fallback" ? `the fallback ${t.fallback}${t.held ? " (held for maintenance)" : ""}` : "its own pods"}`);
  if (t && t.lastFailoverTime) summary.push(`last failover ${time(t.lastFailoverTime)}: ${t.lastFailoverReason || "no reason recorded"}`);
  if (t && t.lastFailbackTime) summary.push(`last failback ${time(t.lastFailbackTime)}`);
  if (s.rollout) summary.push(`rollout ${s.rollout.phase}${s.rollout.stableRevision ? ` (stable ${s.rollout.stableRevision})` : ""}`);
  $("service-summary").textContent = summary.join(" · ");
  body.replaceChildren(
    ...v.pods.map((p) =>
      el(
        "tr",
        { "data-pod": p.name, "data-track": p.track },
        el("td", {}, el("span", { class: "name" }, p.name), p.track === "fallback" ? el("span", { class: "ns" }, ` of ${p.owner}`) : null),
        el("td", {}, p.track),
        el("td", {}, `${p.phase}, ${p.ready ? "ready" : "not ready"}${p.restarts ? `, ${p.restarts} restarts` : ""}`),
        el("td", { "data-field": "serves" }, p.serves === true ? el("span", { class: "ok" }, "in") : p.serves === false ? el("span", { class: "bad" }, "OUT") : "—"),
        el("td", { "data-field": "verdict" }, !p.verdict ? el("span", { class: "quiet" }, "not probed") : p.verdict.healthy ? el("span", { class: "ok" }, "healthy") : el("span", { class: "bad" }, "unhealthy")),
        el("td", { class: "small" }, evidence(p.verdict)),
      ),
    ),
  );
}

function figures(f) {
  if (!f) return "not seen";
  const parts = [`ready ${f.readyReplicas ?? 0}/${f.replicas ?? "?"}`];
  if (f.totalPods !== null && f.totalPods !== undefined) parts.push(`healthy ${f.healthyPods ?? 0}/${f.totalPods}`);
  if (f.active) parts.push(f.active + (f.held ? " (held)" : ""));
  if (f.requests) parts.push(requests(f.requests));
  return parts.join(" · ");
}

function renderTimeline() {
  const tl = state.timeline;
  const items = tl.entries
    .slice(-60)
    .reverse()
    .map((e) =>
      el(
        "li",
        { "data-reason": e.reason, "data-kind": e.kind, "data-service": `${e.namespace}/${e.service}` },
        el("span", { class: "when" }, time(e.time)),
        el("span", { class: "reason" }, e.reason + (e.count > 1 ? ` ×${e.count}` : "")),
        el("span", { class: "quiet" }, `${e.service}`),
        e.note ? el("span", { class: "note" }, e.note) : null,
        e.before || e.after ? el("span", { class: "figures" }, `${figures(e.before)} → ${figures(e.after)}`) : null,
      ),
    );
  $("timeline").replaceChildren(...items);
  $("timeline-empty").hidden = items.length > 0;
  drawPlot();
}

// The plot: one lane per service, a band for each stretch between two samples (red while the
// traffic is on the fallback, amber while some pods are unhealthy, green otherwise) and a dot
// for each Event, coloured by kind. Times run from a little before the oldest thing shown (at
// least half a minute, at most an hour back) to now.
function drawPlot() {
  const tl = state.timeline;
  const svg = $("plot");
  const width = Math.max(svg.clientWidth || 0, 600);
  const lanes = [...new Set([...tl.series.map((s) => `${s.namespace}/${s.service}`), ...tl.entries.map((e) => `${e.namespace}/${e.service}`)])].sort();
  const laneHeight = 30, top = 8, left = 150, right = 16, axis = 22;
  const height = top + Math.max(lanes.length, 1) * laneHeight + axis;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", height);
  const times = [
    ...tl.entries.map((e) => Date.parse(e.time)),
    ...tl.series.flatMap((s) => s.samples.map((x) => Date.parse(x.time))),
  ];
  const latest = Math.max(Date.now(), ...times);
  const first = Math.min(latest, ...times);
  const span = Math.min(Math.max(latest - first, 30e3) * 1.05, 60 * 60e3);
  const earliest = latest - span;
  const x = (t) => left + ((Math.max(t, earliest) - earliest) / (latest - earliest)) * (width - left - right);
  const nodes = [];
  const ticks = 6;
  for (let i = 0; i <= ticks; i++) {
    const t = earliest + ((latest - earliest) * i) / ticks;
    nodes.push(el("line", { class: "grid", x1: x(t), x2: x(t), y1: top, y2: height - axis }));
    nodes.push(el("text", { class: "axis", x: x(t), y: height - 6, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" }, time(t)));
  }
  lanes.forEach((lane, i) => {
    const y = top + i * laneHeight;
    const mid = y + laneHeight / 2;
    nodes.push(el("text", { class: "lane-label", x: 0, y: mid + 4 }, lane.length > 22 ? `…${lane.slice(-21)}` : lane));
    nodes.push(el("line", { class: "grid", x1: left, x2: width - right, y1: mid, y2: mid }));
    const series = tl.series.find((s) => `${s.namespace}/${s.service}` === lane);
    const samples = series ? series.samples : [];
    samples.forEach((s, j) => {
      const from = Date.parse(s.time);
      const to = j + 1 < samples.length ? Date.parse(samples[j + 1].time) : latest;
      if (to < earliest) return;
      const colour = s.active === "fallback" ? "var(--failover)" : s.totalPods && s.healthyPods < s.totalPods ? "var(--ejection)" : "var(--failback)";
      nodes.push(
        el("rect", { x: x(from), y: mid - 5, width: Math.max(x(to) - x(from), 1), height: 10, fill: colour, "fill-opacity": 0.25, "data-active": s.active || "" },
          el("title", {}, `${lane} from ${time(from)}: ${figures(s)}`)),
      );
    });
    // Pod ejections and returns sit small below the line; the moments that move a whole
    // service's traffic or release are drawn last, on top, and larger.
    const small = (e) => e.kind === "ejection" || e.kind === "return";
    tl.entries
      .filter((e) => `${e.namespace}/${e.service}` === lane)
      .sort((a, b) => small(b) - small(a))
      .forEach((e) => {
        nodes.push(
          el("circle", { cx: x(Date.parse(e.time)), cy: small(e) ? mid + 9 : mid, r: small(e) ? 4 : 7, fill: `var(--${e.kind})`, stroke: "#fff", "stroke-width": 1.5, "data-reason": e.reason },
            el("title", {}, `${time(e.time)} ${e.reason}: ${e.note}`)),
        );
      });
  });
  svg.replaceChildren(...nodes);
}

function legend() {
  const dots = Object.entries(KINDS).map(([k, label]) => el("span", {}, el("i", { style: `background: var(--${k})` }), label));
  const bands = [
    ["var(--failback)", "serving from its own pods"],
    ["var(--ejection)", "some pods unhealthy"],
    ["var(--failover)", "on the fallback"],
  ].map(([c, label]) => el("span", {}, el("i", { class: "band", style: `background: ${c}; opacity: 0.35` }), label));
  $("legend").replaceChildren(...dots, ...bands);
}

function setConnection(s) {
  const conn = $("conn");
  conn.dataset.state = s;
  conn.textContent = s === "live" ? "live" : s;
}

function connect() {
  if (state.source) state.source.close();
  const query = state.selected ? `?service=${encodeURIComponent(state.selected)}` : "";
  const source = new EventSource(`/api/stream${query}`);
  state.source = source;
  source.onopen = () => setConnection("live");
  source.onerror = () => setConnection(source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting");
  source.addEventListener("fleet", (e) => {
    state.fleet = JSON.parse(e.data);
    renderFleet();
  });
  source.addEventListener("service", (e) => {
    state.service = JSON.parse(e.data);
    renderService();
  });
  source.addEventListener("timeline", (e) => {
    state.timeline = JSON.parse(e.data);
    renderTimeline();
  });
}

function select(service) {
  if (service === state.selected) return;
  state.selected = service;
  state.service = null;
  history.replaceState(null, "", `#${service}`);
  if (state.fleet) renderFleet();
  renderService();
  connect();
}

legend();
state.selected = decodeURIComponent(location.hash.slice(1)) || null;
window.addEventListener("resize", () => state.timeline && drawPlot());
connect();
