// The dashboard: one server-sent event stream (/events) updates every page in
// place; no polling, no reload, no library.  Text goes in with textContent only,
// so nothing a task carries can become markup.
"use strict";
const points = [];
const MAX_POINTS = 300;
let status = null;

function $(id) { return document.getElementById(id); }
function text(id, value) { $(id).textContent = value; }
function duration(seconds) {
  seconds = Math.round(seconds);
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}
function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell;
    tr.appendChild(td);
  }
  return tr;
}
function fill(tbodyId, rows, emptyId) {
  const body = $(tbodyId);
  body.replaceChildren(...rows.map(row));
  if (emptyId) $(emptyId).style.display = rows.length ? "none" : "block";
}

function chart(svgId, series) {
  const svg = $(svgId);
  const width = 600, height = 160, pad = 24;
  let max = 1;
  for (const s of series) for (const p of points) max = Math.max(max, p[s.key]);
  const ns = "http://www.w3.org/2000/svg";
  const parts = [];
  for (const fraction of [0, 0.5, 1]) {
    const y = height - pad - fraction * (height - 2 * pad);
    const line = document.createElementNS(ns, "line");
    line.setAttribute("class", "grid");
    line.setAttribute("x1", pad); line.setAttribute("x2", width);
    line.setAttribute("y1", y); line.setAttribute("y2", y);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 0); label.setAttribute("y", y + 3);
    label.textContent = +(max * fraction).toPrecision(3);
    parts.push(line, label);
  }
  for (const s of series) {
    const coords = points.map((p, i) => {
      const x = pad + (i / Math.max(1, MAX_POINTS - 1)) * (width - pad);
      const y = height - pad - (p[s.key] / max) * (height - 2 * pad);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", coords.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", s.color);
    line.setAttribute("stroke-width", "2");
    parts.push(line);
    const legend = document.createElementNS(ns, "text");
    legend.setAttribute("x", width - 90); legend.setAttribute("y", 12 + 12 * series.indexOf(s));
    legend.setAttribute("style", "fill:" + s.color);
    legend.textContent = s.key;
    parts.push(legend);
  }
  svg.replaceChildren(...parts);
}

function drawCharts() {
  chart("chart-rates", [{ key: "submitted", color: "#3867d6" }, { key: "completed", color: "#20bf6b" }]);
  chart("chart-depth", [{ key: "queued", color: "#f7b731" }, { key: "running", color: "#8854d0" }]);
  chart("chart-failed", [{ key: "failed", color: "#eb3b5a" }]);
}

function render() {
  if (!status) return;
  const t = status.tasks;
  text("rate-submitted", status.rates.submitted_per_second);
  text("rate-completed", status.rates.completed_per_second);
  text("count-scheduled", t.scheduled);
  text("count-queued", t.queued);
  text("count-running", t.running);
  text("count-prefetched", t.prefetched);
  text("count-succeeded", t.succeeded);
  text("count-failed", t.failed);
  text("count-items", status.map_items.succeeded + status.map_items.failed);
  const store = status.store;
  text("store", store.available ? "available" + (store.failed_commits ? " (" + store.failed_commits + " failed commits)" : "")
    : "UNAVAILABLE: " + store.error);
  text("uptime", duration(status.uptime_seconds));
  text("version", status.version);
  fill("workers", status.workers.map(w => [w.name, w.slots, w.running, w.held, w.done, w.failed,
    duration(w.last_seen_seconds_ago) + " ago", w.types.join(", "), duration(w.connected_seconds)]), "no-workers");
  fill("maps", status.jobs.map(j => {
    const rate = j.open_seconds > 0 ? j.items_done / j.open_seconds : 0;
    const left = j.items_received - j.items_done;
    return [j.id, j.type, j.items_done, j.items_received + (j.ended ? "" : "+"), j.items_failed,
      rate.toFixed(1), rate > 0 && j.ended ? duration(left / rate) : "-", j.chunk_size];
  }), "no-maps");
  const when = s => s === null ? "-" : new Date(s * 1000).toISOString().replace(".000Z", "Z");
  fill("schedules", status.schedules.map(s => [s.name, s.cron ? s.cron + " " + s.tz : "every " + s.every + " s",
    s.paused ? "paused" : when(s.next_due), when(s.last_due), s.last_task === null ? "-" : s.last_task, s.type]),
    "no-schedules");
  fill("progress", status.progress.map(p => [p.id, p.type, p.done, p.total === null ? "?" : p.total, p.note]));
  fill("waiting", Object.entries(status.waiting_by_type).map(([type, w]) =>
    [type, w.queued, w.no_worker_runs_it ? "no worker runs it" : "yes"]));
  document.title = "taskmesh · " + status.workers.length + " workers · " + (t.succeeded + t.failed) + " done";
}

function showPage() {
  const name = (location.hash || "#overview").slice(1);
  if (name === "tasks") listTasks(null);
  for (const page of document.querySelectorAll(".page")) page.classList.toggle("shown", page.id === "page-" + name);
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.hash === "#" + name);
}

async function showTask(id) {
  const detail = $("task-detail");
  detail.replaceChildren();
  const url = /^[0-9]+$/.test(id) ? "/api/tasks/" + id : "/api/tasks?key=" + encodeURIComponent(id);
  const answer = await (await fetch(url)).json();
  const task = answer.tasks ? (answer.tasks[0] || { error: "no task with key " + id }) : answer;
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(task, null, 2);
  detail.appendChild(pre);
}

// The task list: read from the store a page at a time, on request (not live:
// a list that moves under the reader is no list).
let nextBefore = null;
async function listTasks(before) {
  const query = new URLSearchParams();
  if ($("filter-state").value) query.set("state", $("filter-state").value);
  if ($("filter-type").value.trim()) query.set("type", $("filter-type").value.trim());
  if (before) query.set("before", before);
  const answer = await (await fetch("/api/tasks?" + query)).json();
  if (answer.error) { fill("task-list", [[answer.error]]); return; }
  nextBefore = answer.next_before;
  $("tasks-older").disabled = nextBefore === null;
  fill("task-list", answer.tasks.map(t => [t.id, t.type === null ? "-" : t.type, t.state, t.attempts, t.losses,
    t.key === null ? "" : t.key, t.submitted_seconds_ago === null ? "" : duration(t.submitted_seconds_ago) + " ago",
    t.finished_seconds_ago === null ? "" : duration(t.finished_seconds_ago) + " ago"]));
  for (const tr of $("task-list").children) {
    tr.firstChild.style.cursor = "pointer";
    tr.firstChild.addEventListener("click", () => showTask(tr.firstChild.textContent));
  }
}
$("task-filter").addEventListener("submit", e => { e.preventDefault(); listTasks(null); });
$("tasks-newest").addEventListener("click", () => listTasks(null));
$("tasks-older").addEventListener("click", () => { if (nextBefore !== null) listTasks(nextBefore); });

function connect() {
  const events = new EventSource("/events");
  events.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "badge ok"; });
  events.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").className = "badge bad"; });
  events.addEventListener("history", e => { points.splice(0, points.length, ...JSON.parse(e.data)); drawCharts(); });
  events.addEventListener("point", e => {
    points.push(JSON.parse(e.data));
    if (points.length > MAX_POINTS) points.shift();
    drawCharts();
  });
  events.addEventListener("status", e => { status = JSON.parse(e.data); render(); });
}

window.addEventListener("hashchange", showPage);
$("task-search").addEventListener("submit", e => { e.preventDefault(); showTask($("task-id").value.trim()); });
showPage();
connect();
