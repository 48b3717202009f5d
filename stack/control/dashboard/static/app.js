// The stack's dashboard: reads data.json every few seconds and draws it. No framework, no CDN.
"use strict";

const PARAMS = new URLSearchParams(location.search);
const KEY = PARAMS.get("key");
let range = PARAMS.get("range") || "15m"; // the charts' history: 15m, 1h, 6h or 24h (data.json says which)
let pending = null;
const NUMBERS = [
  // [field of data.json, label, digits]: the same fields as `stack status --json`
  ["ready", "ready", 0], ["desired", "desired", 0], ["requests_per_second", "req/s", 2],
  ["p50_ms", "p50 ms", 2], ["p99_ms", "p99 ms", 2], ["in_flight", "in flight", 1],
  ["2xx", "2xx", 0], ["4xx", "4xx", 0], ["5xx", "5xx", 0],
];
const CHARTS = [
  // [title, series, unit]; a second series is drawn beside the first
  ["requests/s", ["requests_per_second"], ""], ["latency p50 / p99", ["p50_ms", "p99_ms"], " ms"],
  ["errors/s (5xx)", ["errors_per_second"], ""], ["in flight", ["in_flight"], ""], ["replicas", ["replicas"], ""],
];
const COLORS = ["#2563eb", "#d97706"];
let refresh = 2000;
let lastGood = 0;

function h(tag, attrs, ...children) {
  const svg = ["svg", "path", "line", "text", "rect"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

function chart(doc, title, lines, unit) {
  const W = 300, H = 80, end = Math.floor(doc.now / doc.step_s) * doc.step_s, start = end - doc.window_s;
  const all = lines.flat().map((p) => p[1]);
  const top = Math.max(1e-9, ...all) * 1.15;
  const x = (t) => ((t - start) / doc.window_s) * W;
  const y = (v) => H - 12 - (v / top) * (H - 20);
  const svg = h("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": title });
  svg.append(h("line", { x1: 0, y1: H - 12, x2: W, y2: H - 12, stroke: "#d0d5dd" }));
  if (!all.length) svg.append(h("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no data"));
  lines.forEach((points, i) => {
    if (!points.length) return;
    // A gap (no point for more than two steps) breaks the line: no data is not a zero.
    let d = "", prev = null;
    for (const [t, v] of points) {
      d += `${prev !== null && t - prev <= doc.step_s * 2 ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      prev = t;
    }
    svg.append(h("path", { d, fill: "none", stroke: COLORS[i], "stroke-width": 1.6, "vector-effect": "non-scaling-stroke" }));
  });
  svg.append(h("text", { x: 2, y: H - 1, class: "empty" }, "-" + doc.range), h("text", { x: W - 2, y: H - 1, "text-anchor": "end", class: "empty" }, "now"));
  const now = lines.map((p) => (p.length ? fmt(p[p.length - 1][1], 2) + unit : "–")).join(" / ");
  const last = lines[0] && lines[0].length ? lines[0][lines[0].length - 1][1] : null;
  return h("div", { class: "chart", "data-last": last }, h("div", { class: "title" }, h("span", {}, title), h("span", {}, "max " + fmt(top / 1.15, 2) + unit, " · now " + now)), svg);
}

function decisions(api) {
  const auto = api.autoscaler;
  if (!auto) return h("p", { class: "note" }, api.autoscaled ? "autoscaler: no decision yet" : "fixed replica count");
  const changes = (auto.changes || []).slice(-5).reverse();
  return h("div", { class: "autoscaler" },
    h("h3", {}, "autoscaler"),
    h("p", { "data-field": "autoscaler-last" }, auto.last || "no decision yet"),
    changes.length ? h("ol", { class: "decisions" }, changes.map((c) =>
      h("li", {}, h("span", { class: "when" }, clock(c.at)), ` ${c.current} → ${c.desired} [${c.rule}] ${c.reason}`,
        c.applied ? "" : ` (not applied: ${c.error})`))) : null);
}

function events(api) {
  const recent = (api.events || []).slice().reverse();
  if (!recent.length) return null;
  return h("div", { class: "events" },
    h("h3", {}, "events"),
    h("ol", { class: "events", "data-field": "events" }, recent.map((e) => h("li", {}, e))));
}

function affinity(api) {
  const a = api.affinity;
  if (!a) return null;
  const ratio = a.hit_ratio === null || a.hit_ratio === undefined ? "–" : `${Math.round(a.hit_ratio * 100)}%`;
  const rows = Object.entries(a.models || {}).map(([value, replicas]) =>
    h("tr", {}, h("td", {}, value), h("td", {}, replicas.join(", ")), h("td", {}, String((a.in_flight || {})[value] || 0))));
  return h("div", { class: "affinity" },
    h("h3", {}, "model affinity"),
    h("p", {}, "hit ratio ", h("span", { "data-field": "hit-ratio" }, ratio),
      " · loads/min ", h("span", { "data-field": "loads-per-minute" }, String(a.loads_per_minute ?? 0))),
    rows.length ? h("table", { "data-field": "affinity" },
      h("tr", {}, h("th", {}, "value"), h("th", {}, "routed to"), h("th", {}, "in flight")), rows) : null);
}

function apiCard(doc, api) {
  const numbers = NUMBERS.map(([field, label, digits]) =>
    h("div", { class: "number" + (field === "5xx" && api[field] > 0 ? " bad" : "") },
      h("div", { class: "label" }, label), h("div", { class: "value", "data-field": field }, fmt(api[field], digits))));
  const bounds = api.autoscaled ? ` · autoscaled ${api.min_replicas}–${api.max_replicas}` : "";
  return h("section", { class: "api card", "data-api": api.name },
    h("div", { class: "head" }, h("h2", {}, api.name), h("span", { class: "endpoint" }, api.endpoint),
      h("span", { class: "bounds" }, bounds)),
    h("div", { class: "numbers" }, numbers),
    h("div", { class: "charts" }, CHARTS.map(([title, keys, unit]) => chart(doc, title, keys.map((k) => (api.series || {})[k] || []), unit))),
    affinity(api),
    decisions(api),
    events(api));
}

function splitterCard(s) {
  const total = Object.values(s.weights).reduce((a, b) => a + b, 0) || 1;
  const bar = h("div", { class: "bar" });
  for (const [api, weight] of Object.entries(s.weights)) {
    const part = h("span", { title: `${api} ${weight}` }, `${api} ${Math.round((weight / total) * 100)}%`);
    part.style.width = `${(weight / total) * 100}%`;
    bar.append(part);
  }
  const observed = s.observed ? Object.entries(s.observed).map(([a, v]) => `${a} ${(v * 100).toFixed(0)}%`).join(", ") : "";
  const c = s.canary;
  return h("div", { class: "splitter", "data-splitter": s.name },
    h("h3", {}, `${s.name} ${s.endpoint}`, s.overridden ? " (set by stack split)" : "", s.mirror ? ` · mirror ${s.mirror}` : ""),
    bar, observed ? h("p", {}, "observed over the last minute: " + observed) : null,
    c ? h("p", { "data-field": "canary" }, `canary ${c.api}: ${c.phase} at ${c.weight}% (steps ${c.steps.join(", ")})`,
      c.decisions.length ? ` · last: ${c.decisions[c.decisions.length - 1].reason || ""}` : "") : null);
}

function usageTable(doc, usage) {
  // each named key's use of each API over the charts' range, as `stack usage --since <range>` shows it
  const head = ["key", "api", "requests", "rate limited", "forbidden", "predict s", "GPU s", "bytes in", "bytes out"];
  return h("table", { class: "usage card", "data-field": "usage" },
    h("caption", {}, `over the last ${doc.range}`),
    h("tr", {}, head.map((x) => h("th", {}, x))),
    usage.map((u) => h("tr", { "data-key": u.name, "data-api": u.api },
      [u.name, u.api, u.requests, u.rate_limited, u.forbidden, fmt(u.predict_seconds, 2), fmt(u.gpu_seconds, 2),
        u.bytes_in, u.bytes_out].map((x) => h("td", {}, x)))));
}

function gpuCard(doc, gpu) {
  return h("div", { class: "charts", "data-gpu": gpu.gpu },
    chart(doc, `GPU ${gpu.gpu} utilization`, [(gpu.utilization || []).map(([t, v]) => [t, v * 100])], " %"),
    chart(doc, `GPU ${gpu.gpu} memory`, [(gpu.memory_used_bytes || []).map(([t, v]) => [t, v / 2 ** 30])], " GiB"));
}

function dataUrl() {
  const query = new URLSearchParams();
  if (KEY) query.set("key", KEY);
  query.set("range", range);
  return "data.json?" + query;
}

function rangePicker(doc) {
  const select = document.getElementById("range");
  if (select.options.length !== doc.ranges.length) {
    select.replaceChildren(...doc.ranges.map((r) => h("option", { value: r }, "last " + r)));
    select.addEventListener("change", () => {
      range = select.value;
      const query = new URLSearchParams(location.search);
      query.set("range", range);
      history.replaceState(null, "", "?" + query); // a reload or a shared link keeps the range
      clearTimeout(pending);
      tick();
    });
  }
  select.value = doc.range;
}

function draw(doc) {
  rangePicker(doc);
  document.getElementById("project").textContent = doc.project;
  document.title = `${doc.project} · stack dashboard`;
  document.getElementById("apis").replaceChildren(...doc.apis.map((api) => apiCard(doc, api)));
  document.getElementById("splitters-section").hidden = !doc.splitters.length;
  document.getElementById("splitters").replaceChildren(...doc.splitters.map(splitterCard));
  const usage = doc.usage || [];
  document.getElementById("usage-section").hidden = !usage.length;
  document.getElementById("usage").replaceChildren(usageTable(doc, usage));
  document.getElementById("gpus-section").hidden = !doc.gpus.length;
  document.getElementById("gpus").replaceChildren(...doc.gpus.map((g) => gpuCard(doc, g)));
  const problems = document.getElementById("problems");
  problems.hidden = !doc.problems.length;
  problems.replaceChildren(...doc.problems.map((p) => h("li", {}, p)));
  document.body.dataset.updated = String(doc.now);
}

async function tick() {
  const updated = document.getElementById("updated");
  try {
    const asked = range;
    const response = await fetch(dataUrl(), { cache: "no-store" });
    const doc = await response.json();
    if (!response.ok) throw new Error(doc.error || response.statusText);
    refresh = Math.max(1000, (doc.refresh_s || 2) * 1000);
    if (asked !== range) return; // the range changed meanwhile: its own read is on the way
    draw(doc);
    lastGood = doc.now;
    updated.textContent = `updated ${clock(doc.now)} · every ${refresh / 1000}s`;
    updated.classList.remove("stale");
  } catch (err) {
    updated.textContent = `not updated${lastGood ? " since " + clock(lastGood) : ""}: ${err.message}`;
    updated.classList.add("stale");
  }
  clearTimeout(pending);
  pending = setTimeout(tick, refresh);
}

tick();
