// The tideflow web UI: plain JavaScript, no build step. Every value from the server is put
// into the page with textContent (never innerHTML), so records cannot inject markup.
// A pipeline's page follows its run through the server's event stream (server-sent events:
// the server pushes counts, lag, latency and taps as they change) and falls back to polling
// the JSON API only when the stream cannot be opened.
"use strict";

const POLL_MS = 1000;
const THROUGHPUT_WINDOW_MS = 10 * 60 * 1000;  // the throughput chart shows the last 10 minutes
let timers = [];
let page = {};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "onclick" || key === "oninput" || key === "onchange") node[key] = value;
    else if (key === "text") node.textContent = value;
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) {
    document.getElementById("server-status").textContent =
      "This server needs its token: open this page once as /?token=YOUR_TOKEN";
  }
  if (!response.ok) {
    const error = new Error((data && data.detail) || response.statusText);
    error.data = data;
    error.status = response.status;
    throw error;
  }
  return data;
}

function every(fn, ms = POLL_MS) {
  fn();
  timers.push(setInterval(fn, ms));
}

function fmt(n) { return typeof n === "number" ? n.toLocaleString("en-US") : (n ?? ""); }
// Three significant digits, no exponent: 0.0020973154 -> "0.0021", 14.2857 -> "14.3".
function sig(n) { return Number(n.toPrecision(3)).toLocaleString("en-US", { maximumFractionDigits: 12 }); }
function when(t) { return t ? new Date(t * 1000).toLocaleString() : ""; }
function badge(status) { return el("span", { class: `badge ${status}`, "data-status": status, text: status }); }
function view() { return document.getElementById("view"); }

function route() {
  timers.forEach(clearInterval);
  timers = [];
  if (page.stream) page.stream.close();
  page = {};
  const hash = location.hash || "#/";
  const match = hash.match(/^#\/p\/([A-Za-z0-9_-]+)/);
  if (match) return pipelinePage(match[1]);
  if (hash === "#/new") return newPipelinePage();
  if (hash === "#/alerts") return alertsPage();
  return listPage();
}

// -- pipeline list ---------------------------------------------------------------------

function listPage() {
  const body = el("tbody");
  view().replaceChildren(
    el("h1", { text: "Pipelines" }),
    el("table", { id: "pipelines" },
      el("thead", {}, el("tr", {},
        ...["Pipeline", "Status", "Records/s", "Records read", "Dead letters", "Schedule", ""]
          .map((h, i) => el("th", { class: i >= 2 && i <= 4 ? "num" : null, text: h })))),
      body));
  every(async () => {
    const pipelines = await api("GET", "/api/pipelines");
    body.replaceChildren(...pipelines.map((p) => {
      const status = p.valid ? p.status : "invalid";
      const action = p.active
        ? el("button", { class: "stop", onclick: () => api("POST", `/api/pipelines/${p.id}/stop`) }, "Stop")
        : el("button", { class: "start", disabled: !p.valid, onclick: () => api("POST", `/api/pipelines/${p.id}/start`) }, "Start");
      const schedule = p.schedule ? (p.schedule.cron ? `cron ${p.schedule.cron}` : `every ${p.schedule.every}s`)
        + (p.schedule.problem ? ` (${p.schedule.problem})` : "") : "";
      return el("tr", { "data-pipeline": p.id },
        el("td", {}, el("a", { href: `#/p/${p.id}`, text: p.name }), el("div", { class: "muted", text: p.description || p.file })),
        el("td", {}, badge(status)),
        el("td", { class: "num rate", text: fmt(Math.round(p.rate)) }),
        el("td", { class: "num records", text: fmt(p.records_in) }),
        el("td", { class: "num", text: fmt(p.dead_lettered) }),
        el("td", { text: schedule }),
        el("td", {}, action));
    }));
  });
}

// -- one pipeline ----------------------------------------------------------------------

function pipelinePage(pid) {
  page = { pid, rates: [], tapStep: null, tab: "runs", lastSeq: 0, logRun: null, taps: {}, pushes: 0 };
  const title = el("h1", { id: "title" });
  const controls = el("div", { class: "row" },
    el("button", { id: "start", class: "primary", onclick: () => control("start") }, "Start"),
    el("button", { id: "stop", onclick: () => control("stop") }, "Stop"),
    el("button", { id: "restart", onclick: () => control("restart") }, "Restart"),
    el("span", { id: "run-status" }), el("span", { id: "live-mode", class: "muted" }),
    el("span", { id: "message", class: "error" }));
  const alerts = el("div", { id: "pipeline-alerts", class: "error" });
  const tabs = ["runs", "logs", "dead", "editor"].map((name) =>
    el("button", { id: `tab-${name}`, onclick: () => showTab(name) },
      { runs: "Run history", logs: "Logs", dead: "Dead letters", editor: "YAML editor" }[name]));
  view().replaceChildren(
    title, controls, alerts,
    el("div", { class: "row" },
      el("div", { class: "card" }, el("h2", { text: "Steps" }), el("div", { id: "graph" })),
      el("div", { class: "card" }, el("h2", { text: "Throughput" }), el("div", { id: "throughput", class: "chart-box" }),
        el("h2", { text: "Counters" }), el("table", { id: "counters" }),
        el("h2", { text: "End-to-end latency and lag per source" }), el("table", { id: "sources" }))),
    el("div", { class: "card", id: "tap" },
      el("h2", { text: "Live tap: latest records" }),
      el("label", {}, "Step ", el("select", { id: "tap-step", onchange: (e) => { page.tapStep = e.target.value; showTap(); } })),
      el("label", {}, " Chart column ", el("select", { id: "tap-chart-column", onchange: () => showTap() })),
      el("div", { id: "tap-chart", class: "chart-box" }),
      el("div", { id: "tap-records" })),
    el("div", { class: "tabs" }, ...tabs),
    el("div", { class: "card", id: "tab-body" }));
  showTab("runs");
  refreshPipeline(title).then(() => follow(title));
  every(async () => {
    const data = await api("GET", "/api/alerts");
    alerts.replaceChildren(...data.firing.filter((a) => a.pipeline === pid)
      .map((a) => el("div", { class: "alert", "data-alert": a.alert, text: `alert ${a.alert} is firing: ${alertValue(a.metric, a.value)} (threshold ${alertValue(a.metric, a.threshold)})` })));
  }, 3000);
}

async function control(action) {
  const message = document.getElementById("message");
  message.textContent = "";
  try {
    await api("POST", `/api/pipelines/${page.pid}/${action}`);
  } catch (error) {
    message.textContent = error.message;
  }
  const title = document.getElementById("title");
  await refreshPipeline(title);
  // A run just started: follow it now rather than when the idle stream reconnects.
  if (page.stream) follow(title);
}

// Follow the latest run through the event stream; poll only if the stream cannot be had.
function follow(title) {
  if (page.polling) return;
  if (page.stream) page.stream.close();
  if (!window.EventSource) return poll(title);
  const stream = new EventSource(`/api/pipelines/${page.pid}/events`);
  page.stream = stream;
  let heard = false;
  stream.addEventListener("run", (event) => {
    heard = true;
    page.pushes += 1;
    if (!page.detail) return;
    document.getElementById("live-mode").textContent = "live: push";
    const live = JSON.parse(event.data);
    const ended = page.detail.active && !live.active;
    Object.assign(page.detail, live);
    showPipeline(title, page.detail);
    if (ended && page.tab === "runs") runsTab(document.getElementById("tab-body"));
  });
  stream.addEventListener("tap", (event) => {
    const tap = JSON.parse(event.data);
    page.taps[tap.step] = tap.records;
    if (tap.step === page.tapStep) drawTap(tap.records);
  });
  // The server ends the stream when no run is active and the browser reconnects by itself
  // after the `retry` the server set; only a stream that never opened (a proxy that drops
  // it, a refused request) or that the browser gave up on means "poll instead".
  stream.onerror = () => {
    if (stream.readyState === EventSource.CLOSED || !heard) {
      stream.close();
      if (page.stream === stream) poll(title);
    }
  };
}

function poll(title) {
  page.stream = null;
  page.polling = true;
  document.getElementById("live-mode").textContent = "live: polling";
  every(() => refreshPipeline(title));
  every(refreshTap, 1500);
}

async function refreshPipeline(title) {
  let p;
  try { p = await api("GET", `/api/pipelines/${page.pid}`); } catch (error) {
    view().replaceChildren(el("p", { class: "error", text: error.message }));
    return;
  }
  page.detail = p;
  showPipeline(title, p);
  page.polls = (page.polls || 0) + 1;
  if (page.polling && page.tab === "runs" && page.polls % 3 === 0) runsTab(document.getElementById("tab-body"));
}

function showPipeline(title, p) {
  title.replaceChildren(p.name, " ", badge(p.valid ? p.status : "invalid"));
  document.getElementById("start").disabled = !p.valid || p.active;
  document.getElementById("stop").disabled = !p.active;
  const run = p.run;
  document.getElementById("run-status").textContent = run
    ? `run ${run.id} (${run.kind}, ${run.trigger}): ${fmt(run.records_in)} records in ${run.elapsed}s${run.error ? " — " + run.error : ""}`
    : "no run yet";
  const now = Date.now();
  page.rates.push([now, p.active ? p.rate : 0]);
  while (page.rates.length > 2 && page.rates[0][0] < now - THROUGHPUT_WINDOW_MS) page.rates.shift();
  TideflowChart.draw(document.getElementById("throughput"), page.rates, {
    id: "throughput-chart", yTitle: "records/s", xTitle: "time", xType: "time",
    empty: "start the pipeline to see its throughput",
  });
  drawGraph(p.graph, run ? run.counts : {});
  drawCounters(p.graph, run ? run.counts : {});
  drawSources(p.graph, run);
  const select = document.getElementById("tap-step");
  const steps = p.graph.filter((n) => n.kind !== "sink").map((n) => n.name);
  for (const t of p.taps) if (!steps.includes(t)) steps.push(t);
  if (select.options.length !== steps.length) {
    select.replaceChildren(...steps.map((s) => el("option", { value: s, text: s })));
    if (!page.tapStep || !steps.includes(page.tapStep)) page.tapStep = steps[steps.length - 1] || null;
    select.value = page.tapStep || "";
    if (!page.polling) showTap();
  }
  if (page.tab === "logs") refreshLogs(run);
}

function depthOf(graph) {
  const depth = {};
  for (const node of graph) {
    const parents = node.inputs.map((i) => depth[i.split(".")[0]] ?? 0);
    depth[node.name] = node.kind === "source" ? 0 : 1 + Math.max(0, ...parents);
  }
  return depth;
}

function drawGraph(graph, counts) {
  const depth = depthOf(graph);
  const columns = {};
  for (const node of graph) (columns[depth[node.name]] ||= []).push(node);
  // Top to bottom: one row per depth, so long chains stay readable in a narrow card.
  const W = 190, H = 54, GX = 24, GY = 26;
  const pos = {};
  for (const [d, nodes] of Object.entries(columns)) {
    nodes.forEach((node, i) => { pos[node.name] = { x: 10 + i * (W + GX), y: 10 + d * (H + GY) }; });
  }
  const width = 20 + Math.max(...Object.values(columns).map((c) => c.length)) * (W + GX);
  const height = 20 + (Math.max(0, ...Object.keys(columns).map(Number)) + 1) * (H + GY);
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width, height, id: "graph-svg" });
  const defs = svgEl("defs");
  const marker = svgEl("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" });
  marker.append(svgEl("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9aa8bb" }));
  defs.append(marker);
  svg.append(defs);
  for (const node of graph) {
    for (const input of node.inputs) {
      const from = pos[input.split(".")[0]], to = pos[node.name];
      if (!from || !to) continue;
      svg.append(svgEl("path", { class: "edge", d: `M${from.x + W / 2},${from.y + H} C${from.x + W / 2},${from.y + H + 14} ${to.x + W / 2},${to.y - 14} ${to.x + W / 2},${to.y}` }));
    }
  }
  for (const node of graph) {
    const c = counts[node.name] || {};
    const g = svgEl("g", { class: `node ${node.kind}${node.name === page.tapStep ? " selected" : ""}`, "data-node": node.name, transform: `translate(${pos[node.name].x},${pos[node.name].y})` });
    g.append(svgEl("rect", { width: W, height: H }));
    const name = svgEl("text", { x: 8, y: 17, "font-weight": 600 }); name.textContent = `${node.name} (${node.type})`;
    const numbers = svgEl("text", { x: 8, y: 36 }); numbers.textContent = `in ${fmt(c.in ?? 0)} · out ${fmt(c.out ?? 0)}`;
    const dead = svgEl("text", { x: 8, y: 50, fill: c.dead_lettered ? "#c62828" : "#6b7280" }); dead.textContent = `dead ${fmt(c.dead_lettered ?? 0)} · filtered ${fmt(c.filtered ?? 0)}`;
    g.append(name, numbers, dead);
    g.addEventListener("click", () => {
      if (node.kind === "sink") return;
      page.tapStep = node.name;
      document.getElementById("tap-step").value = node.name;
      showTap();
    });
    svg.append(g);
  }
  document.getElementById("graph").replaceChildren(svg);
}

function drawCounters(graph, counts) {
  const fields = ["in", "out", "filtered", "dead_lettered", "batches"];
  const table = document.getElementById("counters");
  // State size: a stateful step's encoded state at the latest checkpoint (blank: stateless).
  const state = (name) => ((counts[name] || {}).report || {}).state_bytes;
  table.replaceChildren(
    el("tr", {}, el("th", { text: "node" }), ...fields.map((f) => el("th", { class: "num", text: f.replace("_", "-") })),
      el("th", { class: "num", text: "state (bytes)" })),
    ...graph.map((node) => el("tr", {}, el("td", { text: `${node.name} (${node.kind})` }),
      ...fields.map((f) => el("td", { class: "num", "data-count": `${node.name}:${f}`, text: fmt((counts[node.name] || {})[f] ?? 0) })),
      el("td", { class: "num", "data-count": `${node.name}:state_bytes`, text: fmt(state(node.name)) }))));
}

function drawSources(graph, run) {
  // End to end: a record's own timestamp (or the moment it was read) to the checkpoint that
  // made it visible, over the latest batches. Lag: only sources that can tell report it.
  const latency = (run && run.end_to_end) || {};
  const lag = (run && run.lag) || {};
  const secs = (v) => (typeof v === "number" ? `${v.toFixed(3)} s` : "");
  const heads = ["source", "visible batches", "last", "p50", "p95", "max", "lag (records)", "lag (s)"];
  document.getElementById("sources").replaceChildren(
    el("tr", {}, ...heads.map((h, i) => el("th", { class: i ? "num" : null, text: h }))),
    ...graph.filter((n) => n.kind === "source").map((node) => {
      const l = latency[node.name] || {}, g = lag[node.name] || {};
      return el("tr", {}, el("td", { text: node.name }),
        el("td", { class: "num", "data-latency": `${node.name}:batches`, text: fmt(l.batches) }),
        ...["last", "p50", "p95", "max"].map((k) => el("td", { class: "num", "data-latency": `${node.name}:${k}`, text: secs(l[k]) })),
        el("td", { class: "num", "data-lag": `${node.name}:records`, text: fmt(g.records) }),
        el("td", { class: "num", "data-lag": `${node.name}:seconds`, text: secs(g.seconds) }));
    }));
}

// The tap of the chosen step: pushed records when the stream runs, else fetched.
function showTap() {
  if (page.polling) refreshTap();
  else drawTap(page.taps[page.tapStep] || []);
}

async function refreshTap() {
  if (!page.tapStep) return;
  const data = await api("GET", `/api/pipelines/${page.pid}/tap?step=${encodeURIComponent(page.tapStep)}`);
  drawTap(data.records || []);
}

function drawTap(records) {
  if (!page.tapStep) return;
  const columns = [...new Set(records.flatMap((r) => Object.keys(r)))];
  const numeric = columns.filter((c) => records.some((r) => typeof r[c] === "number"));
  const chartSelect = document.getElementById("tap-chart-column");
  if (chartSelect.dataset.columns !== numeric.join(",")) {
    chartSelect.replaceChildren(...numeric.map((c) => el("option", { value: c, text: c })));
    chartSelect.dataset.columns = numeric.join(",");
  }
  const column = chartSelect.value;
  // Along a time column when the records have one (the first whose values are all
  // timestamps), else in the order the records arrived.
  const timeColumn = columns.find((c) => records.every((r) => r[c] === null || r[c] === undefined || isTimestamp(r[c]))
    && records.some((r) => isTimestamp(r[c])));
  const value = (r) => (typeof r[column] === "number" ? r[column] : null);
  const points = !column ? [] : timeColumn
    ? records.filter((r) => isTimestamp(r[timeColumn])).map((r) => [Date.parse(r[timeColumn]), value(r)]).sort((a, b) => a[0] - b[0])
    : records.map((r, i) => [i + 1, value(r)]);
  TideflowChart.draw(document.getElementById("tap-chart"), points, {
    id: "tap-chart-svg", yTitle: column || "value", xType: timeColumn ? "time" : "number",
    xTitle: timeColumn || `record (latest ${records.length})`,
    empty: column ? "no records yet" : "no numeric column at this step", zero: false, dots: true,
    // Several records at one time (one per sensor, say) are several series: points only.
    line: new Set(points.map((p) => p[0])).size === points.length,
  });
  const table = el("table", { id: "tap-table", "data-step": page.tapStep },
    el("tr", {}, ...columns.map((c) => el("th", { text: c }))),
    ...records.map((r) => el("tr", {}, ...columns.map((c) => el("td", { text: typeof r[c] === "object" && r[c] !== null ? JSON.stringify(r[c]) : (r[c] ?? "") })))));
  document.getElementById("tap-records").replaceChildren(
    records.length ? table : el("p", { class: "muted", text: "No records seen at this step yet; start the pipeline." }));
}

const TIMESTAMP = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$/;
function isTimestamp(v) { return typeof v === "string" && TIMESTAMP.test(v) && !Number.isNaN(Date.parse(v)); }

function showTab(name) {
  page.tab = name;
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.id === `tab-${name}`);
  const body = document.getElementById("tab-body");
  body.replaceChildren();
  if (name === "runs") runsTab(body);
  if (name === "logs") { page.lastSeq = 0; page.logRun = null; body.append(el("pre", { class: "logs", id: "logs" })); refreshLogs(page.detail && page.detail.run); }
  if (name === "dead") deadTab(body);
  if (name === "editor") editorTab(body, page.pid);
}

async function runsTab(body) {
  const rows = await api("GET", `/api/pipelines/${page.pid}/runs`);
  if (page.tab !== "runs") return;  // another tab was opened meanwhile: leave it alone
  body.replaceChildren(el("table", { id: "runs" },
    el("tr", {}, ...["Run", "Status", "Trigger", "Started", "Ended", "Records read", "Error"].map((h) => el("th", { text: h }))),
    ...rows.map((r) => {
      const read = r.counts ? Object.values(r.counts).filter((c) => c.kind === "source").reduce((s, c) => s + c.out + c.dead_lettered, 0) : "";
      return el("tr", {}, el("td", { text: r.id }), el("td", {}, badge(r.status)), el("td", { text: r.trigger || "" }),
        el("td", { text: when(r.started_at) }), el("td", { text: when(r.ended_at) }), el("td", { class: "num", text: fmt(read) }),
        el("td", { class: "error", text: r.error || "" }));
    })));
}

// The run's log lines, fetched from the last one shown on. One fetch at a time: events
// arrive faster than a fetch may take, and two fetches from the same point would show the
// same lines twice.
async function refreshLogs(run) {
  const pre = document.getElementById("logs");
  if (!pre || !run) return;
  if (page.logFetch) { page.logAgain = run; return; }
  if (page.logRun !== run.id) { page.logRun = run.id; page.lastSeq = 0; pre.replaceChildren(); }
  page.logFetch = true;
  try {
    const data = await api("GET", `/api/runs/${run.id}/logs?after=${page.lastSeq}`);
    if (page.logRun !== run.id || document.getElementById("logs") !== pre) return;
    const follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    for (const line of data.lines) {
      if (line.seq <= page.lastSeq) continue;
      const time = new Date(line.at * 1000).toLocaleTimeString("en-GB", { hour12: false });
      pre.append(el("div", { class: `log-line ${line.level.toLowerCase()}`, "data-seq": line.seq, "data-level": line.level },
        el("span", { class: "log-time", text: time }), " ", el("span", { class: "log-level", text: line.level.padEnd(7) }), " ",
        el("span", { class: "log-text", text: line.text })));
      page.lastSeq = line.seq;
    }
    if (follow) pre.scrollTop = pre.scrollHeight;
  } finally {
    page.logFetch = false;
    const again = page.logAgain;
    page.logAgain = null;
    if (again) refreshLogs(again);
  }
}

function deadTab(body) {
  const step = el("select", { id: "dead-step" }, el("option", { value: "", text: "all steps" }),
    ...(page.detail ? page.detail.graph.map((n) => el("option", { value: n.name, text: n.name })) : []));
  const reason = el("input", { id: "dead-reason", placeholder: "reason contains…" });
  const summary = el("div", { id: "dead-summary" });
  const table = el("table", { id: "dead-table" });
  const status = el("span", { id: "dead-status" });
  const load = async () => {
    const query = new URLSearchParams({ limit: "200" });
    if (step.value) query.set("step", step.value);
    if (reason.value) query.set("reason", reason.value);
    const data = await api("GET", `/api/pipelines/${page.pid}/deadletters?${query}`);
    if (page.tab !== "dead") return;
    summary.replaceChildren(...data.summary.map((s) => el("div", {}, el("b", { text: fmt(s.count) }), ` at ${s.step}: ${s.reason}`)));
    table.replaceChildren(
      el("tr", {}, el("th", { text: "" }), ...["#", "Step", "Reason", "Record", "When"].map((h) => el("th", { text: h }))),
      ...data.records.map((r) => el("tr", { "data-dead-id": r.id },
        el("td", {}, el("input", { type: "checkbox", value: r.id, "data-step": r.step })),
        el("td", { text: r.id }), el("td", { text: r.step }), el("td", { text: r.reason }),
        el("td", { class: "record", text: r.record }), el("td", { text: when(r.created_at) }))));
  };
  const replay = async () => {
    const chosen = [...table.querySelectorAll("input:checked")];
    const steps = [...new Set(chosen.map((c) => c.dataset.step))];
    if (!chosen.length || steps.length !== 1) { status.textContent = "choose records of one step"; return; }
    try {
      const run = await api("POST", `/api/pipelines/${page.pid}/deadletters/replay`, { step: steps[0], ids: chosen.map((c) => Number(c.value)) });
      status.textContent = `replay run ${run.id} started`;
    } catch (error) { status.textContent = error.message; }
  };
  body.replaceChildren(el("div", { class: "row" }, step, reason,
    el("button", { id: "dead-filter", onclick: load }, "Filter"),
    el("button", { id: "dead-replay", onclick: replay }, "Replay selected"), status), summary, table);
  load();
}

// The YAML editor (CodeMirror, from static/vendor/editor.js): line numbers, and every
// validation issue on its line as the text is typed.
async function editorTab(body, pid) {
  const host = el("div", { class: "yaml", id: "yaml" });
  const messages = el("ul", { class: "issues", id: "issues" });
  const saved = el("span", { id: "save-status" });
  // A pipeline's own text, even when the tab is opened before the page has loaded it: a
  // template saved over the pipeline would replace it.
  const detail = pid ? page.detail || await api("GET", `/api/pipelines/${pid}`) : null;
  if (pid && page.tab !== "editor") return;
  const start = detail ? detail.yaml : "name: my_pipeline\nsource:\n  type: generate\n  count: 1000\nsink:\n  type: stdout\n";
  let pending = null, checked = 0;
  const check = async () => {
    const asked = ++checked;
    const result = await api("POST", "/api/validate", { yaml: editor.getText() });
    if (asked === checked) showIssues(messages, editor, result.valid, result.issues);  // a later check wins
  };
  const editor = TideflowEditor.create(host, {
    doc: start,
    label: pid ? `YAML of pipeline ${pid}` : "YAML of the new pipeline",
    onChange: () => { clearTimeout(pending); pending = setTimeout(check, 300); },
  });
  page.editor = editor;
  const save = async () => {
    saved.textContent = "";
    try {
      if (pid) await api("PUT", `/api/pipelines/${pid}`, { yaml: editor.getText() });
      else { const created = await api("POST", "/api/pipelines", { yaml: editor.getText() }); location.hash = `#/p/${created.id}`; }
      saved.textContent = "saved";
    } catch (error) {
      saved.textContent = error.message;
      if (error.data && error.data.issues) showIssues(messages, editor, false, error.data.issues);
    }
  };
  const buttons = [el("button", { id: "save", class: "primary", onclick: save }, pid ? "Save" : "Create")];
  if (pid) buttons.push(el("button", { id: "delete", onclick: async () => {
    if (!confirm(`Delete ${pid}?`)) return;
    try { await api("DELETE", `/api/pipelines/${pid}`); location.hash = "#/"; } catch (error) { saved.textContent = error.message; }
  } }, "Delete"));
  body.replaceChildren(host, el("div", { class: "row" }, ...buttons, saved), messages);
  check();
}

function showIssues(list, editor, valid, issues) {
  list.dataset.valid = valid ? "true" : "false";
  editor.showIssues(valid ? [] : issues);
  if (valid) { list.replaceChildren(el("li", { class: "ok", text: "✓ valid" })); return; }
  list.replaceChildren(...issues.map((issue) => el("li", {
    class: "issue",
    "data-line": issue.line,
    title: issue.line ? `go to line ${issue.line}` : null,
    text: `line ${issue.line ?? "?"}: ${issue.path ? issue.path + ": " : ""}${issue.message}`,
    onclick: () => { if (issue.line) editor.goToLine(issue.line); },
  })));
}

function newPipelinePage() {
  const body = el("div", { class: "card" });
  view().replaceChildren(el("h1", { text: "New pipeline" }), body);
  editorTab(body, null);
}

// An alert's value in its metric's unit: a dead-letter rate is a share of the records
// read, lag is in seconds or records, the others count records.
function alertValue(metric, value) {
  if (value === null || value === undefined) return "n/a";
  if (metric === "dead_letter_rate") return `${sig(value * 100)} % of records read`;
  if (metric === "source_lag") return `${sig(value)} s`;
  return `${fmt(Math.round(value))} records`;
}

function delivery(n) {
  const text = n.status === "failed" ? `${n.to}: failed: ${n.error}` : `${n.to}: ${n.status}`;
  return el("div", { class: `delivery ${n.status}`, "data-delivery": n.status, text });
}

function alertsPage() {
  const body = el("div");
  view().replaceChildren(el("h1", { text: "Alerts" }), body);
  every(async () => {
    const data = await api("GET", "/api/alerts");
    body.replaceChildren(
      el("h2", { text: "Firing" }),
      data.firing.length ? el("ul", { id: "firing" }, ...data.firing.map((a) => el("li", { "data-alert": a.alert },
        `${a.pipeline}/${a.alert}: `, el("b", { class: "alert-value", text: alertValue(a.metric, a.value) }),
        ` (threshold ${alertValue(a.metric, a.threshold)}${a.since ? ", since " + when(a.since) : ""})`)))
        : el("p", { class: "muted", text: "none" }),
      el("h2", { text: "Events and notifications" }),
      data.events.length ? el("table", { id: "alert-events" },
        el("tr", {}, ...["When", "Alert", "State", "Value", "Message", "Notifications"].map((h) => el("th", { text: h }))),
        ...data.events.map((e) => el("tr", { "data-alert": e.alert, "data-state": e.state },
          el("td", { text: new Date(e.at).toLocaleString() }),
          el("td", { text: `${e.pipeline}/${e.alert}` }),
          el("td", {}, badge(e.state)),
          el("td", { class: "num alert-value", text: alertValue(e.metric, e.value) }),
          el("td", { text: e.message }),
          el("td", { class: "deliveries" }, ...(e.notifications || []).map(delivery)))))
        : el("p", { class: "muted", text: "none yet" }));
  }, 2000);
}

async function serverStatus() {
  try {
    const health = await api("GET", "/api/health");
    document.getElementById("server-status").textContent = `${health.active_runs} active run(s)`;
  } catch (error) { /* the banner set by api() explains a 401 */ }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => { serverStatus(); setInterval(serverStatus, 5000); });
window.addEventListener("DOMContentLoaded", route);
