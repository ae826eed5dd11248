// The tideflow web UI: plain JavaScript, no build step. Every value from the server is put
// into the page with textContent (never innerHTML), so records cannot inject markup.
// A pipeline's page follows its run through the server's event stream (server-sent events:
// the server pushes counts, lag, latency and taps as they change) and falls back to polling
// the JSON API only when the stream cannot be opened.
"use strict";

const POLL_MS = 1000;
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
      el("div", { class: "card" }, el("h2", { text: "Throughput (records/s)" }), el("canvas", { id: "throughput", width: 600, height: 120 }),
        el("h2", { text: "Counters" }), el("table", { id: "counters" }),
        el("h2", { text: "End-to-end latency and lag per source" }), el("table", { id: "sources" }))),
    el("div", { class: "card", id: "tap" },
      el("h2", { text: "Live tap: latest records" }),
      el("label", {}, "Step ", el("select", { id: "tap-step", onchange: (e) => { page.tapStep = e.target.value; showTap(); } })),
      el("label", {}, " Chart column ", el("select", { id: "tap-chart-column", onchange: () => showTap() })),
      el("canvas", { id: "tap-chart", width: 600, height: 120 }),
      el("div", { id: "tap-records" })),
    el("div", { class: "tabs" }, ...tabs),
    el("div", { class: "card", id: "tab-body" }));
  showTab("runs");
  refreshPipeline(title).then(() => follow(title));
  every(async () => {
    const data = await api("GET", "/api/alerts");
    alerts.replaceChildren(...data.firing.filter((a) => a.pipeline === pid)
      .map((a) => el("div", { class: "alert", text: `alert ${a.alert} is firing (value ${a.value})` })));
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
  page.rates.push(p.active ? p.rate : 0);
  if (page.rates.length > 120) page.rates.shift();
  drawLine(document.getElementById("throughput"), page.rates);
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

function drawLine(canvas, values) {
  // Match the drawing buffer to the displayed size, or the browser stretches the picture.
  if (canvas.clientWidth && canvas.width !== canvas.clientWidth) canvas.width = canvas.clientWidth;
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const max = Math.max(1, ...values);
  const min = Math.min(0, ...values);
  ctx.fillStyle = "#6b7280";
  ctx.font = "11px sans-serif";
  ctx.fillText(fmt(Math.round(max)), 4, 12);
  ctx.strokeStyle = "#1f6feb";
  ctx.lineWidth = 2;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = values.length > 1 ? (i / (values.length - 1)) * (width - 10) + 5 : 5;
    const y = height - 8 - ((v - min) / (max - min || 1)) * (height - 24);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
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
  drawLine(document.getElementById("tap-chart"), column ? records.map((r) => Number(r[column]) || 0) : []);
  const table = el("table", { id: "tap-table", "data-step": page.tapStep },
    el("tr", {}, ...columns.map((c) => el("th", { text: c }))),
    ...records.map((r) => el("tr", {}, ...columns.map((c) => el("td", { text: typeof r[c] === "object" && r[c] !== null ? JSON.stringify(r[c]) : (r[c] ?? "") })))));
  document.getElementById("tap-records").replaceChildren(
    records.length ? table : el("p", { class: "muted", text: "No records seen at this step yet; start the pipeline." }));
}

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
  body.replaceChildren(el("table", { id: "runs" },
    el("tr", {}, ...["Run", "Status", "Trigger", "Started", "Ended", "Records read", "Error"].map((h) => el("th", { text: h }))),
    ...rows.map((r) => {
      const read = r.counts ? Object.values(r.counts).filter((c) => c.kind === "source").reduce((s, c) => s + c.out + c.dead_lettered, 0) : "";
      return el("tr", {}, el("td", { text: r.id }), el("td", {}, badge(r.status)), el("td", { text: r.trigger || "" }),
        el("td", { text: when(r.started_at) }), el("td", { text: when(r.ended_at) }), el("td", { class: "num", text: fmt(read) }),
        el("td", { class: "error", text: r.error || "" }));
    })));
}

async function refreshLogs(run) {
  const pre = document.getElementById("logs");
  if (!pre || !run) return;
  if (page.logRun !== run.id) { page.logRun = run.id; page.lastSeq = 0; pre.textContent = ""; }
  const data = await api("GET", `/api/runs/${run.id}/logs?after=${page.lastSeq}`);
  for (const line of data.lines) {
    pre.append(`${new Date(line.at * 1000).toLocaleTimeString()} ${line.level} ${line.text}\n`);
    page.lastSeq = line.seq;
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

function editorTab(body, pid) {
  const text = el("textarea", { class: "yaml", id: "yaml", spellcheck: "false" });
  const messages = el("ul", { class: "issues", id: "issues" });
  const saved = el("span", { id: "save-status" });
  text.value = pid && page.detail ? page.detail.yaml : "name: my_pipeline\nsource:\n  type: generate\n  count: 1000\nsink:\n  type: stdout\n";
  let pending = null;
  const check = async () => {
    const result = await api("POST", "/api/validate", { yaml: text.value });
    showIssues(messages, text, result.valid, result.issues);
  };
  text.oninput = () => { clearTimeout(pending); pending = setTimeout(check, 300); };
  const save = async () => {
    saved.textContent = "";
    try {
      if (pid) await api("PUT", `/api/pipelines/${pid}`, { yaml: text.value });
      else { const created = await api("POST", "/api/pipelines", { yaml: text.value }); location.hash = `#/p/${created.id}`; }
      saved.textContent = "saved";
    } catch (error) {
      saved.textContent = error.message;
      if (error.data && error.data.issues) showIssues(messages, text, false, error.data.issues);
    }
  };
  const buttons = [el("button", { id: "save", class: "primary", onclick: save }, pid ? "Save" : "Create")];
  if (pid) buttons.push(el("button", { id: "delete", onclick: async () => {
    if (!confirm(`Delete ${pid}?`)) return;
    try { await api("DELETE", `/api/pipelines/${pid}`); location.hash = "#/"; } catch (error) { saved.textContent = error.message; }
  } }, "Delete"));
  body.replaceChildren(text, el("div", { class: "row" }, ...buttons, saved), messages);
  check();
}

function showIssues(list, text, valid, issues) {
  if (valid) { list.replaceChildren(el("li", { class: "ok", text: "valid" })); return; }
  list.replaceChildren(...issues.map((issue) => el("li", {
    "data-line": issue.line,
    text: `line ${issue.line ?? "?"}: ${issue.path ? issue.path + ": " : ""}${issue.message}`,
    onclick: () => {
      const lines = text.value.split("\n");
      const offset = lines.slice(0, (issue.line || 1) - 1).join("\n").length;
      text.focus();
      text.setSelectionRange(offset, offset + (lines[(issue.line || 1) - 1] || "").length + 1);
    },
  })));
}

function newPipelinePage() {
  const body = el("div", { class: "card" });
  view().replaceChildren(el("h1", { text: "New pipeline" }), body);
  editorTab(body, null);
}

function alertsPage() {
  const body = el("div");
  view().replaceChildren(el("h1", { text: "Alerts" }), body);
  every(async () => {
    const data = await api("GET", "/api/alerts");
    body.replaceChildren(
      el("h2", { text: "Firing" }),
      data.firing.length ? el("ul", {}, ...data.firing.map((a) => el("li", { text: `${a.pipeline}/${a.alert}: value ${a.value}` }))) : el("p", { class: "muted", text: "none" }),
      el("h2", { text: "Notifications" }),
      el("table", {}, ...data.events.map((e) => el("tr", {}, el("td", { text: e.at }), el("td", {}, badge(e.state === "firing" ? "failed" : "succeeded")), el("td", { text: e.message })))));
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
