// The wswarm command center. Draws the view model the server folds from the run's event log
// (one `view` message per change over server-sent events); it keeps no state of its own beyond
// what is on screen. Task text and agent output are untrusted: every string goes in through
// textContent or an attribute, never as HTML.
"use strict";

const STATUSES = ["pending", "running", "gating", "merging", "merged", "failed", "blocked"];
const state = { run: null, source: null, dag: null, selected: null, detailKey: null, view: null };
// The run's figures come from their own endpoint, fetched again as events arrive, at most every
// COST_EVERY ms while the run goes on (each fetch reads the run's attempts and its event log).
const COST_EVERY = 2000;
const cost = { at: 0, events: -1, busy: false, timer: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function $(id) { return document.getElementById(id); }
function enc(text) { return encodeURIComponent(text); }

function clock(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.floor(seconds);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

function money(usd) { return "$" + Number(usd || 0).toFixed(usd >= 1 ? 2 : 4); }
function stamp(ts) { return new Date(ts * 1000).toLocaleTimeString([], { hour12: false }); }
function dot(status) { return el("span", { class: "dot st-" + status, title: status }); }

async function getJSON(path) {
  const res = await fetch(path, { cache: "no-store" });
  if (!res.ok) throw new Error(path + ": " + res.status);
  return res.json();
}

async function getText(path) {
  const res = await fetch(path, { cache: "no-store" });
  if (!res.ok) throw new Error(path + ": " + res.status);
  return res.text();
}

// -- the run and its stream ----------------------------------------------------------------------

async function start() {
  const params = new URLSearchParams(location.search);
  const index = await getJSON("/api/runs");
  state.run = params.get("run") || index.default;
  const select = clear($("run-select"));
  for (const run of index.runs) {
    select.append(el("option", { value: run.id, selected: run.id === state.run ? "selected" : null, text: runLabel(run) }));
  }
  select.addEventListener("change", () => { location.search = "?run=" + enc(select.value); });
  state.dag = await getJSON("/api/runs/" + enc(state.run) + "/dag");
  drawDag(state.dag);
  connect();
}

function runLabel(run) {
  return run.id + (run.title ? " · " + run.title : "") + " (" + run.state + ", " + run.merged + "/" + run.tasks + ")";
}

function connect() {
  const source = new EventSource("/api/runs/" + enc(state.run) + "/events?events=0");
  state.source = source;
  source.addEventListener("view", (message) => render(JSON.parse(message.data)));
  source.addEventListener("end", () => {
    source.close();
    $("connection").textContent = "replayed the finished run's event log";
  });
  source.addEventListener("open", () => { $("connection").textContent = "live"; });
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) $("connection").textContent = "reconnecting…";
  });
}

// -- drawing a view ----------------------------------------------------------------------------

function render(view) {
  state.view = view;
  document.body.dataset.state = view.state;
  document.body.dataset.events = String(view.events);
  const option = [...$("run-select").options].find((o) => o.value === state.run);
  if (option) option.textContent = runLabel({ id: state.run, title: view.title, state: view.state,
    merged: view.progress.merged, tasks: view.progress.total });
  const badge = $("run-state");
  badge.textContent = view.state + (view.merge_gate ? " · merge gate " + view.merge_gate : "") +
    (view.waiting ? " · waiting: " + view.waiting : "");
  badge.className = "badge run-" + view.state;
  $("run-title").textContent = view.title || "";
  renderMission(view);
  renderAlerts(view);
  renderAgents(view);
  renderActivity(view);
  colourDag(view);
  renderTasks(view);
  renderSpend(view);
  refreshCost(view);
  if (state.selected) refreshDetail(view);
}

function renderMission(view) {
  const m = view.mission, p = view.progress;
  $("m-active").textContent = String(m.active_agents);
  $("m-completed").textContent = m.completed + " / " + m.total;
  $("m-bar").style.width = (m.total ? (100 * m.completed / m.total) : 0).toFixed(1) + "%";
  $("m-files").textContent = String(m.files_modified);
  $("m-conflicts").textContent = String(m.conflicts);
  $("m-conflicts").parentElement.classList.toggle("warn", m.conflicts > 0);
  const forecast = (view.forecasts || []).length;
  $("m-forecasts").textContent = forecast ? forecast + " forecast now" : "";
  $("m-eta").textContent = view.state === "running" ? (p.eta === null ? "estimating…" : (p.eta ? clock(p.eta) : "finishing")) : view.state;
  $("m-elapsed").textContent = p.elapsed === null ? "" : clock(p.elapsed) + " elapsed";
  $("m-spend").textContent = money(view.spend.cost_usd);
  $("m-tokens").textContent = view.spend.input_tokens || view.spend.output_tokens
    ? view.spend.input_tokens.toLocaleString() + " in / " + view.spend.output_tokens.toLocaleString() + " out tokens" : "";
}

function renderAlerts(view) {
  const box = clear($("alerts"));
  // Standing forecasts first: conflicts still ahead, while the agents can still avoid them.
  for (const f of view.forecasts || []) {
    const head = f.other === "integration head";
    box.append(el("div", { class: "alert forecast", "data-task": f.task, "data-other": f.other },
      el("strong", { text: "Conflict forecast" }), " in ", el("code", { text: f.files.join(", ") || "?" }),
      " — task ", el("code", { text: f.task }), " (attempt " + f.attempt + ")",
      head ? " against work already merged" : " against what ", head ? null : el("code", { text: f.other }),
      head ? null : " is changing",
      el("span", { class: "muted", text: " · since " + stamp(f.ts) + " · not a conflict yet" })));
  }
  for (const c of view.conflicts.slice(-5).reverse()) {
    box.append(el("div", { class: "alert conflict", "data-task": c.task },
      el("strong", { text: "Conflict" }), " in ", el("code", { text: c.files.join(", ") || "?" }),
      " — task ", el("code", { text: c.task }), " (attempt " + c.attempt + ")",
      c.with.length ? " against work merged by " : "", c.with.length ? el("code", { text: c.with.join(", ") }) : null,
      el("span", { class: "muted", text: " · " + stamp(c.ts) + " · re-queued on the fresh integration head" })));
  }
  for (const a of view.alerts.slice(-3).reverse()) {
    box.append(el("div", { class: "alert failure" }, el("strong", { text: a.kind }), " ",
      a.task ? el("code", { text: a.task }) : null, " ", a.text));
  }
}

function renderAgents(view) {
  const box = clear($("agents"));
  for (const a of view.agents) {
    const files = a.files.length ? a.files.slice(0, 4).join(", ") + (a.files.length > 4 ? " +" + (a.files.length - 4) : "") : "—";
    box.append(el("div", { class: "agent", "data-agent": a.id, "data-status": a.status, "data-task": a.task || "" },
      el("div", { class: "agent-head" }, dot(a.status), el("span", { class: "agent-id", text: a.id }),
        el("span", { class: "agent-type", text: [a.type, a.agent].filter(Boolean).join(" · ") || "idle" }),
        a.worker ? el("span", { class: "agent-worker muted", text: "on " + a.worker }) : null),
      el("div", { class: "agent-task" }, a.task ? el("code", { text: a.task }) : el("span", { class: "muted", text: "waiting for a task" }),
        a.task ? el("span", { class: "muted", text: " attempt " + a.attempt + " · " + clock(a.elapsed) }) : null),
      el("div", { class: "agent-desc muted", text: a.description }),
      el("div", { class: "steps", title: "agent → gate → merge" },
        ...[1, 2, 3].map((i) => el("span", { class: "step" + (a.progress >= i ? " on st-" + a.status : "") }))),
      el("div", { class: "agent-activity", text: a.activity || (a.task ? "…" : "") }),
      el("div", { class: "agent-files" }, el("span", { class: "muted", text: "files " }), files),
      el("div", { class: "agent-done muted", text: a.completed + " task" + (a.completed === 1 ? "" : "s") + " completed" })));
  }
}

function renderActivity(view) {
  const list = clear($("activity"));
  for (const e of view.recent.slice().reverse()) {
    list.append(el("li", { class: "ev ev-" + e.kind, "data-kind": e.kind },
      el("span", { class: "ev-time", text: stamp(e.ts) }),
      el("span", { class: "ev-kind", text: e.kind }),
      e.task ? el("code", { class: "ev-task", text: e.task }) : null,
      el("span", { class: "ev-text", text: e.text })));
  }
}

// -- the DAG -------------------------------------------------------------------------------------

const NODE_W = 168, NODE_H = 34, GAP_X = 56, GAP_Y = 14, PAD = 12;

function drawDag(dag) {
  const box = clear($("dag"));
  const rows = Math.max(1, ...dag.nodes.map((n) => n.row + 1));
  const width = PAD * 2 + dag.layers * NODE_W + Math.max(0, dag.layers - 1) * GAP_X;
  const height = PAD * 2 + rows * NODE_H + (rows - 1) * GAP_Y;
  box.setAttribute("viewBox", "0 0 " + width + " " + height);
  box.setAttribute("width", width);
  box.setAttribute("height", height);
  const at = {};
  for (const n of dag.nodes) at[n.id] = { x: PAD + n.layer * (NODE_W + GAP_X), y: PAD + n.row * (NODE_H + GAP_Y) };
  const edges = svg("g", { class: "edges" });
  for (const e of dag.edges) {
    const a = at[e.from], b = at[e.to];
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2, mid = (x1 + x2) / 2;
    edges.append(svg("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`, "data-from": e.from, "data-to": e.to }));
  }
  box.append(edges);
  for (const n of dag.nodes) {
    const label = n.id.length > 22 ? n.id.slice(0, 21) + "…" : n.id;
    const g = svg("g", { class: "node st-pending", "data-task": n.id, transform: `translate(${at[n.id].x},${at[n.id].y})` },
      svg("title", {}, n.id + " — " + n.description),
      svg("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
      svg("text", { x: 10, y: 14, class: "node-id" }, label),
      svg("text", { x: 10, y: 27, class: "node-sub" }, n.type));
    g.addEventListener("click", () => select(n.id));
    box.append(g);
  }
  const legend = clear($("dag-legend"));
  for (const s of STATUSES) legend.append(el("span", { class: "legend-item" }, dot(s), s));
}

function colourDag(view) {
  const byId = {};
  for (const t of view.tasks) byId[t.id] = t;
  for (const node of document.querySelectorAll("#dag .node")) {
    const t = byId[node.dataset.task];
    if (!t) continue;
    node.setAttribute("class", "node st-" + t.status + (state.selected === t.id ? " selected" : ""));
    node.dataset.status = t.status;
  }
}

// -- tasks, spend, detail ----------------------------------------------------------------------

function renderTasks(view) {
  const body = clear($("tasks"));
  for (const t of view.tasks) {
    const active = ["running", "gating", "merging"].includes(t.status);
    body.append(el("tr", { class: state.selected === t.id ? "selected" : "", "data-task": t.id, "data-status": t.status,
      onclick: () => select(t.id) },
      el("td", {}, el("code", { text: t.id })), el("td", { text: t.type }),
      el("td", {}, dot(t.status), " " + t.status), el("td", { text: t.attempt || "" }),
      el("td", { text: clock(t.elapsed) }), el("td", { text: t.files.length || "" }),
      el("td", { text: t.cost_usd ? money(t.cost_usd) : "" }),
      el("td", { class: "reason", text: active ? t.activity : (t.reason || t.gate || "") })));
  }
}

function renderSpend(view) {
  const s = view.spend, box = clear($("spend"));
  box.append(el("div", { class: "spend-total", text: money(s.cost_usd) }),
    el("div", { class: "muted", text: s.input_tokens.toLocaleString() + " input · " + s.output_tokens.toLocaleString() + " output tokens" }));
  const rows = [...Object.entries(s.by_agent).map(([k, v]) => ["agent " + k, v]),
                ...Object.entries(s.by_task).sort((a, b) => b[1] - a[1]).slice(0, 12).map(([k, v]) => ["task " + k, v])];
  if (!rows.length) box.append(el("p", { class: "muted", text: "No model-backed agent has reported a cost yet (command agents cost nothing here)." }));
  const table = el("table", { class: "spend-table" });
  for (const [name, usd] of rows) table.append(el("tr", {}, el("td", { text: name }), el("td", { text: money(usd) })));
  box.append(table);
}

function refreshCost(view) {
  if (cost.events === view.events || cost.busy) return;
  const wait = cost.at + COST_EVERY - Date.now();
  if (view.state === "running" && wait > 0) {
    if (!cost.timer) cost.timer = setTimeout(() => { cost.timer = null; refreshCost(state.view); }, wait);
    return;
  }
  cost.busy = true;
  cost.at = Date.now();
  const events = view.events;
  getJSON("/api/runs/" + enc(state.run) + "/figures")
    .then((figures) => { cost.events = events; renderCost(figures); })
    .catch(() => {})
    .finally(() => { cost.busy = false; });
}

const CAUSES = { conflict: "conflict", gate: "gate failed", agent: "agent failed", timeout: "timed out",
                 no_op: "no-op", ejected: "ejected", error: "error" };

function span(seconds) { return seconds < 60 ? Number(seconds || 0).toFixed(1) + "s" : clock(seconds); }

function renderCost(f) {
  const box = clear($("cost")), w = f.wasted, h = f.held, fc = f.forecast;
  const verdict = f.clean ? "completed cleanly" : f.completed ? "completed, after wasted attempts"
    : f.merged + " of " + f.tasks + " tasks merged so far";
  box.append(el("div", { class: "cost-total", id: "cost-wasted", "data-wasted": w.attempts,
    text: w.attempts + (w.attempts === 1 ? " wasted attempt" : " wasted attempts") }),
    el("div", { class: "muted", text: verdict }));
  const causes = Object.entries(w.by_cause).filter(([, n]) => n).map(([c, n]) => n + " " + (CAUSES[c] || c));
  const rows = [
    ["attempts", f.attempts + (f.attempts_per_merged_task === null ? "" : " · " + f.attempts_per_merged_task.toFixed(2) + " per merged task")],
    ["first try", f.first_try + " of " + f.tasks + " tasks"],
    ["wasted by cause", causes.join(", ") || "none"],
    ["wasted time", span(w.seconds)],
    ["wasted spend", money(w.cost_usd)],
    ["interrupted", f.interrupted.attempts ? f.interrupted.attempts + " (not counted as waste)" : "none"],
    ["held back", h.tasks ? h.tasks + " task" + (h.tasks === 1 ? "" : "s") + ", " + span(h.seconds) +
      (h.longest ? " · longest " + h.longest.task + " " + span(h.longest.seconds) : "") +
      (h.open ? " · " + h.open + " waiting now" : "") : "none"],
    ["conflict forecasts", fc.came_true + " came true · " + fc.did_not + " did not · " + fc.unforecast + " unforecast"],
  ];
  const table = el("table", { class: "spend-table cost-table" });
  for (const [name, value] of rows) table.append(el("tr", { "data-figure": name }, el("td", { text: name }), el("td", { text: value })));
  box.append(table);
}

function select(taskId) {
  state.selected = taskId;
  state.detailKey = null;
  if (state.view) render(state.view);
  $("detail-panel").hidden = false;
  $("detail-panel").scrollIntoView({ behavior: "smooth", block: "start" });
}

function refreshDetail(view) {
  const t = view.tasks.find((x) => x.id === state.selected);
  if (!t) return;
  const key = t.status + "/" + t.attempt + "/" + (t.ended || "");
  if (key === state.detailKey) return;
  state.detailKey = key;
  loadDetail(t.id);
}

async function loadDetail(taskId) {
  const base = "/api/runs/" + enc(state.run) + "/tasks/" + enc(taskId);
  const task = await getJSON(base);
  if (state.selected !== taskId) return;
  $("detail-title").textContent = "";
  $("detail-title").append(dot(task.status), " ", el("code", { text: task.id }), " — " + task.description);
  const box = clear($("detail"));
  box.append(el("p", { class: "muted" }, "type " + task.type + " · status " + task.status +
    (task.reason ? " · " + task.reason : "") + (task.dependencies.length ? " · depends on " + task.dependencies.join(", ") : "")));
  if (task.session_id) {
    box.append(el("p", { class: "session" }, "Claude Code session ", el("code", { text: task.session_id }),
      task.resume ? el("span", {}, " · resume it: ", el("code", { class: "resume", text: task.resume })) : null));
  }
  if (!task.attempts.length) box.append(el("p", { class: "muted", text: "No attempt yet." }));
  for (const a of task.attempts.slice().reverse()) box.append(attemptCard(base, a));
}

function attemptCard(base, a) {
  const card = el("div", { class: "attempt", "data-attempt": a.n },
    el("h3", {}, "Attempt " + a.n + " · ", el("span", { class: "outcome out-" + a.outcome, text: a.outcome }),
      el("span", { class: "muted", text: " · " + clock((a.finished || Date.now() / 1000) - a.started) +
        (a.cost_usd ? " · " + money(a.cost_usd) : "") + (a.added !== null ? " · +" + a.added + " −" + a.removed : "") })));
  if (a.reason) card.append(el("p", { class: "reason", text: a.reason }));
  if (a.findings.length) {
    // What the failing and warning checks found, where: file and line, then the message.
    card.append(el("ul", { class: "findings" }, ...a.findings.map((f) =>
      el("li", { class: "finding" }, el("span", { class: "finding-check", text: f.check }), " ",
        f.path ? el("code", { class: "finding-where", text: f.path + (f.line !== null ? ":" + f.line : "") }) : null,
        f.path ? " " : null, el("span", { class: "finding-message", text: f.message })))));
  }
  if (a.session_id) card.append(el("p", { class: "muted session" }, "Claude Code session ", el("code", { text: a.session_id })));
  if (a.gate) {
    const table = el("table", { class: "gate" });
    table.append(el("tr", {}, el("th", { text: "check" }), el("th", { text: "kind" }), el("th", { text: "status" }),
      el("th", { text: "time" }), el("th", { text: "note" })));
    for (const c of a.gate.checks) {
      table.append(el("tr", { class: "check-" + c.status }, el("td", { text: c.name }), el("td", { text: c.kind }),
        el("td", { text: c.status }), el("td", { text: c.seconds.toFixed(1) + "s" }), el("td", { text: c.note })));
      if (c.output) table.append(el("tr", {}, el("td", { colspan: 5 }, el("pre", { class: "output", text: c.output }))));
    }
    card.append(el("div", { class: "gate-title", text: "Gate " + (a.gate.passed ? "passed" : "FAILED") }), table);
  }
  if (a.files.length) {
    card.append(el("div", { class: "files" }, ...a.files.map((f) =>
      el("span", { class: "file" }, el("code", { text: f.path }), " +" + (f.added ?? "bin") + " −" + (f.removed ?? "")))));
  }
  const out = el("div", { class: "lazy" });
  const buttons = el("div", { class: "buttons" });
  if (a.head) buttons.append(el("button", { onclick: () => showDiff(base + "/attempts/" + a.n + "/diff", out), text: "diff" }));
  for (const name of a.logs) {
    buttons.append(el("button", { onclick: () => showText(base + "/attempts/" + a.n + "/logs/" + enc(name), out), text: name }));
  }
  card.append(buttons, out);
  return card;
}

async function showDiff(path, out) {
  const text = await getText(path);
  const pre = el("pre", { class: "diff" });
  for (const line of text.split("\n")) {
    const kind = line.startsWith("+++") || line.startsWith("---") ? "meta" : line.startsWith("+") ? "add"
      : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : line.startsWith("diff ") ? "meta" : "";
    pre.append(el("span", { class: kind, text: line + "\n" }));
  }
  clear(out).append(text ? pre : el("p", { class: "muted", text: "No changes." }));
}

async function showText(path, out) {
  clear(out).append(el("pre", { class: "log", text: await getText(path) }));
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch((err) => { $("connection").textContent = "error: " + err.message; });
});
