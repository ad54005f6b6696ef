// WardWatch dashboard: live alerts (Server-Sent Events) and a patient's trajectory.
// The token is entered once and kept in sessionStorage (this tab only). Every value from
// the API is put on the page as text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "wardwatch.token";
const alerts = new Map(); // alert_id -> alert
let lastEventId = null;
let streamAbort = null;
let chart = null;

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem(TOKEN_KEY);

function showError(msg) { $("error").textContent = msg || ""; }

function setConnected(on) {
  const c = $("conn");
  c.textContent = on ? "live" : "not connected";
  c.className = "conn " + (on ? "on" : "off");
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) { logout("The token was refused (unknown or revoked)."); throw new Error("401"); }
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
    const err = new Error(detail); err.status = res.status; throw err;
  }
  return res.json();
}

function fmtTime(iso) { return iso ? iso.replace("T", " ").slice(0, 16) : ""; }
// The risk as a percentage with two significant digits (at least one decimal under 10 %),
// as the alert's reason states it: "0.02" hid whether 1.5 % was above a 1.43 % threshold.
function fmtRisk(r) {
  if (r === null || r === undefined) return "–";
  const v = 100 * r;
  if (v === 0) return "0%";
  return v.toFixed(Math.max(0, 1 - Math.floor(Math.log10(Math.abs(v))))) + "%";
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function renderAlerts(newIds = new Set()) {
  const showAll = $("show-all").checked;
  const body = $("alerts").querySelector("tbody");
  body.replaceChildren();
  const list = [...alerts.values()]
    .filter((a) => showAll || a.status === "open")
    .sort((a, b) => (b.raised_at < a.raised_at ? -1 : b.raised_at > a.raised_at ? 1 : b.id - a.id));
  for (const a of list) {
    const tr = document.createElement("tr");
    tr.dataset.alertId = a.alert_id;
    tr.dataset.patient = a.patient;
    if (newIds.has(a.alert_id)) tr.className = "new";
    cell(tr, fmtTime(a.raised_at));
    const ptd = cell(tr, "");
    const link = document.createElement("a");
    link.href = "#"; link.className = "patient"; link.textContent = a.patient;
    link.addEventListener("click", (ev) => { ev.preventDefault(); loadPatient(a.patient); });
    ptd.appendChild(link);
    const sev = cell(tr, "");
    const s = document.createElement("span");
    s.className = "sev sev-" + a.severity; s.textContent = a.severity; sev.appendChild(s);
    cell(tr, fmtRisk(a.risk));
    cell(tr, a.news2 === null ? "–" : String(a.news2));
    cell(tr, a.reason);
    const by = a.status === "acknowledged" ? a.acknowledged_by
      : a.status === "resolved" ? a.resolved_by : null;
    const st = a.status + (by ? " by " + by : "");
    cell(tr, st, "status status-" + a.status);
    const act = cell(tr, "");
    if (a.status === "open") act.appendChild(actionButton(a, "acknowledge", "ack", "Acknowledge"));
    if (a.status !== "resolved") act.appendChild(actionButton(a, "resolve", "resolve", "Resolve"));
    body.appendChild(tr);
  }
  $("alerts-empty").hidden = list.length > 0;
}

function actionButton(a, action, cls, label) {
  const b = document.createElement("button");
  b.type = "button"; b.className = cls; b.textContent = label;
  b.addEventListener("click", () => transition(a, action, b));
  return b;
}

// Acknowledge (open -> acknowledged) or resolve (open or acknowledged -> resolved) an
// alert; the server records the token's name and the time. Resolving takes the alert
// off the open list for everyone, so it asks first.
async function transition(a, action, button) {
  if (action === "resolve" &&
      !window.confirm("Resolve the " + a.severity + " alert for " + a.patient + "? It leaves the open list.")) {
    return;
  }
  button.disabled = true;
  try {
    const row = await api("/alerts/" + encodeURIComponent(a.alert_id) + "/" + action, { method: "POST" });
    alerts.set(row.alert_id, row);
    $("show-all").checked = true;
    renderAlerts();
    showError("");
  } catch (e) {
    button.disabled = false;
    if (e.status === 403) showError("This token's role may not " + action + " alerts.");
    else if (e.status === 409) showError("The alert changed meanwhile (" + e.message + "); reload to see it.");
    else if (e.message !== "401") showError(action[0].toUpperCase() + action.slice(1) + " failed: " + e.message);
  }
}

async function loadAlerts() {
  const data = await api("/alerts?limit=500");
  for (const a of data.alerts) alerts.set(a.alert_id, a);
  renderAlerts();
}

// Server-Sent Events read with fetch (EventSource cannot send an Authorization header).
async function streamAlerts() {
  while (token()) {
    streamAbort = new AbortController();
    try {
      const headers = { Authorization: "Bearer " + token(), Accept: "text/event-stream" };
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      const res = await fetch("/alerts/stream", { headers, signal: streamAbort.signal });
      if (res.status === 401) { logout("The token was refused (unknown or revoked)."); return; }
      if (!res.ok) throw new Error("stream answered " + res.status);
      setConnected(true);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          handleEvent(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
        }
      }
    } catch (e) {
      if (e.name === "AbortError") return;
    }
    setConnected(false);
    await new Promise((r) => setTimeout(r, 3000));
  }
}

function handleEvent(block) {
  let event = "message", id = null, data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") event = val;
    else if (field === "id") id = val;
    else if (field === "data") data += (data ? "\n" : "") + val;
  }
  if (id) lastEventId = id;
  if (event !== "alert" || !data) return;
  const a = JSON.parse(data);
  alerts.set(a.alert_id, a);
  renderAlerts(new Set([a.alert_id]));
}

async function loadPatient(patient) {
  $("patient").value = patient;
  let data;
  try {
    data = await api("/patients/" + encodeURIComponent(patient) + "/timeline");
  } catch (e) {
    if (e.status === 403) $("patient-info").textContent = "This token's role may not read scores.";
    else if (e.status === 404) $("patient-info").textContent = "No patient " + patient + ".";
    else if (e.message !== "401") $("patient-info").textContent = "Could not load: " + e.message;
    return;
  }
  const p = data.patient;
  $("patient-info").textContent = p
    ? `${p.patient}: last scored ${fmtTime(p.last_seen)} UTC, risk ${fmtRisk(p.last_risk)}, ` +
      `NEWS2 ${p.last_news2 ?? "–"}; ${data.scores.length} scores, ${data.alerts.length} alerts`
    : `${patient}: ${data.scores.length} scores, ${data.alerts.length} alerts`;
  drawChart(data);
}

function drawChart(data) {
  const t = (iso) => Date.parse(iso);
  const risk = data.scores.filter((s) => s.risk !== null).map((s) => ({ x: t(s.scored_at), y: s.risk }));
  const news2 = data.scores.filter((s) => s.news2 !== null).map((s) => ({ x: t(s.scored_at), y: s.news2 }));
  const marks = data.alerts.map((a) => ({ x: t(a.raised_at), y: a.risk ?? 1, severity: a.severity, reason: a.reason }));
  // x ticks on whole hours (UTC), at most about ten of them
  const xs = risk.concat(news2, marks).map((pt) => pt.x);
  const hour = 3600e3;
  const lo = Math.min(...xs), hi = Math.max(...xs);
  const step = [1, 2, 3, 6, 12, 24, 48, 168].find((h) => (hi - lo) / (h * hour) <= 10) || 336;
  const xmin = Math.floor(lo / (step * hour)) * step * hour;
  const xmax = Math.ceil(hi / (step * hour)) * step * hour;
  if (chart) chart.destroy();
  chart = new Chart($("chart"), {
    type: "line",
    data: {
      datasets: [
        { label: "risk", data: risk, yAxisID: "risk", borderColor: "#e63946", pointRadius: 0, tension: 0.2 },
        { label: "NEWS2", data: news2, yAxisID: "news2", borderColor: "#457b9d", pointRadius: 0, stepped: true },
        { label: "alerts", type: "scatter", data: marks, yAxisID: "risk", pointStyle: "triangle",
          pointRadius: 9, backgroundColor: "#f4a261", borderColor: "#9b2226" },
      ],
    },
    options: {
      animation: false, maintainAspectRatio: false, parsing: true,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: { type: "linear", min: xs.length ? xmin : undefined, max: xs.length ? xmax : undefined,
             ticks: { stepSize: step * hour, callback: (v) => new Date(v).toISOString().slice(5, 16).replace("T", " ") },
             title: { display: true, text: "time (UTC)" } },
        risk: { position: "left", min: 0, max: 1, title: { display: true, text: "risk" } },
        news2: { position: "right", min: 0, max: 20, grid: { drawOnChartArea: false }, title: { display: true, text: "NEWS2" } },
      },
      plugins: {
        tooltip: { callbacks: { title: (items) => new Date(items[0].parsed.x).toISOString().slice(0, 16).replace("T", " "),
          afterLabel: (item) => item.raw.reason ? item.raw.severity + ": " + item.raw.reason : "" } },
      },
    },
  });
}

function logout(message) {
  if (streamAbort) streamAbort.abort();
  sessionStorage.removeItem(TOKEN_KEY);
  alerts.clear();
  setConnected(false);
  $("main").hidden = true;
  $("login").hidden = false;
  showError("");
  if (message) $("token").placeholder = message;
}

async function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  try {
    await loadAlerts();
  } catch (e) {
    if (e.message !== "401") showError("Could not load alerts: " + e.message);
    return;
  }
  streamAlerts();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("logout").addEventListener("click", () => logout());
  $("show-all").addEventListener("change", () => renderAlerts());
  $("patient-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = $("patient").value.trim();
    if (p) loadPatient(p);
  });
  if (token()) start(); else logout();
});
