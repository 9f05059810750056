// xend's web console: the domain list (kept live from /api/events), the
// lifecycle buttons, config upload, each domain's snapshots (list, take,
// revert, delete) and its serial console
// (xterm.js over /api/domains/<name>/console).  Auth is the session cookie
// from POST /api/login; every call is same-origin.  In a cluster the list
// has every host's domains (/api/domains?cluster=1) with a Host column and
// a host filter; the buttons are on this host's rows (the others are
// another xend's to act on).
"use strict";

const $ = (sel) => document.querySelector(sel);
const rows = new Map();          // name (this host's) or host/name (another's) -> <tr>
let thisHost = "", clusterTimer = null;
let events = null;
let term = null, fit = null, consoleWs = null;

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON */ }
  if (r.status === 401) { showLogin(); }
  if (!r.ok) { throw new Error((data && data.error) || `${method} ${path}: HTTP ${r.status}`); }
  return data;
}

function say(text, isError) {
  const m = $("#message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

// ------------------------------------------------------------------ login
function showLogin() {
  if (events) { events.close(); events = null; }
  $("#main-view").hidden = true;
  $("#logout").hidden = true;
  $("#login-view").hidden = false;
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#login-error").textContent = "";
  try {
    await api("POST", "/api/login", { token: $("#token").value.trim() });
    $("#token").value = "";
    await start();
  } catch (e) {
    $("#login-error").textContent = e.message;
    $("#login-view").hidden = false;
  }
});

$("#logout").addEventListener("click", async () => {
  await api("POST", "/api/logout", {});
  closeConsole();
  showLogin();
});

// ----------------------------------------------------------------- the list
function cell(tr, cls, text) {
  let td = tr.querySelector("td." + cls);
  td.textContent = text;
}

function button(label, cls, onclick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.className = cls;
  b.addEventListener("click", onclick);
  return b;
}

function op(name, verb) {
  return async () => {
    try {
      await api("POST", `/api/domains/${encodeURIComponent(name)}/${verb}`, {});
      say(`${name}: ${verb} done`);
    } catch (e) { say(`${name}: ${e.message}`, true); }
  };
}

function isLocal(d) { return !d.host || d.host === thisHost; }
function rowKey(d) { return isLocal(d) ? d.name : `${d.host}/${d.name}`; }

function ensureRow(d) {
  const key = rowKey(d);
  let tr = rows.get(key);
  if (tr) return tr;
  tr = document.createElement("tr");
  tr.dataset.name = d.name;
  tr.dataset.host = d.host || thisHost;
  tr.id = isLocal(d) ? "dom-" + d.name : `dom-${d.host}--${d.name}`;
  for (const c of ["name", "domid num", "memory num", "vcpus num", "state", "time num", "host", "actions"]) {
    const td = document.createElement("td");
    td.className = c;
    tr.appendChild(td);
  }
  const acts = tr.querySelector("td.actions");
  if (d.domid !== 0 && isLocal(d)) {
    acts.append(
      button("Pause", "pause", op(d.name, "pause")),
      button("Unpause", "unpause", op(d.name, "unpause")),
      button("Shut down", "shutdown", op(d.name, "shutdown")),
      button("Reboot", "reboot", op(d.name, "reboot")),
      button("Destroy", "destroy", op(d.name, "destroy")),
      button("Console", "console", () => openConsole(d.name)),
      button("Snapshots", "snapshots", () => openSnapshots(d.name)),
      button("Screen", "screen", () => window.open(`/ui/vnc.html?dom=${encodeURIComponent(d.name)}`, "_blank")),
    );
  }
  $("#domains tbody").appendChild(tr);
  rows.set(key, tr);
  filterRows();
  return tr;
}

// The host filter: every host seen in the list; rows of the others hidden.
function filterRows() {
  const want = $("#host-filter").value;
  for (const tr of rows.values()) tr.hidden = want !== "" && tr.dataset.host !== want;
}
$("#host-filter").addEventListener("change", filterRows);

function updateHosts(hosts) {
  const sel = $("#host-filter");
  const have = new Set([...sel.options].map((o) => o.value));
  for (const h of hosts) {
    if (!have.has(h)) { const o = document.createElement("option"); o.value = h; o.textContent = h; sel.appendChild(o); }
  }
  $("#host-filter-line").hidden = hosts.size < 2;
  // Events are this host's; the other hosts' rows are re-read every 5 s.
  if (hosts.size >= 2 && !clusterTimer) clusterTimer = setInterval(() => refresh().catch(() => {}), 5000);
}

function render(d) {
  const tr = ensureRow(d);
  cell(tr, "name", d.name);
  cell(tr, "domid", String(d.domid));
  if (d.memory !== undefined) cell(tr, "memory", String(d.memory));
  if (d.online_vcpus !== undefined) cell(tr, "vcpus", String(d.online_vcpus));
  if (d.cpu_time !== undefined) cell(tr, "time", d.cpu_time.toFixed(1));
  cell(tr, "host", tr.dataset.host);
  cell(tr, "state", d.state);
  tr.classList.toggle("paused", d.state[2] === "p");
}

async function refresh() {
  const data = await api("GET", "/api/domains?cluster=1");
  thisHost = data.host || thisHost;
  const seen = new Set(), hosts = new Set();
  for (const d of data.domains) { render(d); seen.add(rowKey(d)); hosts.add(d.host || thisHost); }
  for (const [key, tr] of rows) {
    if (!seen.has(key)) { tr.remove(); rows.delete(key); }
  }
  updateHosts(hosts);
}

function follow() {
  events = new EventSource("/api/events");
  const onEvent = async (e) => {
    const ev = JSON.parse(e.data);
    if (ev.event === "destroyed") {
      const tr = rows.get(ev.name);
      if (tr) { tr.remove(); rows.delete(ev.name); }
    } else if (ev.event === "created" || !rows.has(ev.name)) {
      await refresh();      // a new row needs memory, vCPUs...: fetch them
    } else {
      render(ev);
    }
  };
  for (const kind of ["created", "changed", "destroyed"]) events.addEventListener(kind, onEvent);
  // After a reconnect events may have been missed: resynchronise.
  events.addEventListener("open", () => refresh().catch(() => {}));
  // EventSource gives up on an HTTP error (e.g. 401 once the session has
  // expired): find out why through the API, which shows the login if so.
  events.addEventListener("error", () => {
    if (events && events.readyState === EventSource.CLOSED) {
      events = null;
      refresh().then(() => { if (!events) follow(); }).catch(() => {});
    }
  });
}

// ------------------------------------------------------------------ create
$("#create-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = $("#config-file").files[0];
  if (!f) return;
  say(`creating from ${f.name}...`);
  try {
    const text = await f.text();
    const res = await api("POST", "/api/domains/from-file",
                          { file: text, filename: f.name, paused: $("#create-paused").checked });
    say(`created ${res.name} (domid ${res.domid})`);
    await refresh();
  } catch (e) { say(e.message, true); }
});

// --------------------------------------------------------------- snapshots
let snapDom = null;

function snapPath(name, rest) {
  return `/api/domains/${encodeURIComponent(name)}/${rest}`;
}

async function loadSnapshots() {
  if (!snapDom) return;
  const name = snapDom;
  const data = await api("GET", snapPath(name, "snapshots"));
  const body = $("#snapshots tbody");
  body.replaceChildren();
  for (const s of data.snapshots) {
    const tr = document.createElement("tr");
    tr.id = "snap-" + s.name;
    tr.classList.toggle("current", s.current);
    const when = new Date(s.created * 1000).toLocaleString();
    const size = s.kind === "memory" ? (s.size / 1048576).toFixed(1) : "-";
    for (const [cls, text] of [["name", s.name + (s.current ? " *" : "")], ["time", when], ["kind", s.kind],
                               ["size num", size], ["parent", s.parent || "-"]]) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      tr.appendChild(td);
    }
    const acts = document.createElement("td");
    acts.className = "actions";
    acts.append(
      button("Revert", "revert", () => snapOp(name, "snapshot-revert", s.name, `reverted to ${s.name}`)),
      button("Delete", "delete", () => snapOp(name, "snapshot-delete", s.name, `deleted ${s.name}`)),
    );
    tr.appendChild(acts);
    body.appendChild(tr);
  }
}

async function snapOp(dom, verb, snap, done, extra) {
  say(`${dom}: ${verb} ${snap}...`);
  try {
    await api("POST", snapPath(dom, verb), Object.assign({ name: snap }, extra || {}));
    say(`${dom}: ${done}`);
  } catch (e) { say(`${dom}: ${e.message}`, true); }
  await loadSnapshots().catch((e) => say(`${dom}: ${e.message}`, true));
}

function openSnapshots(name) {
  snapDom = name;
  $("#snapshots-name").textContent = name;
  $("#snapshots-view").hidden = false;
  loadSnapshots().catch((e) => say(`${name}: ${e.message}`, true));
}

$("#snapshots-close").addEventListener("click", () => { snapDom = null; $("#snapshots-view").hidden = true; });

$("#snapshot-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!snapDom) return;
  const snap = $("#snapshot-name").value.trim();
  await snapOp(snapDom, "snapshot-create", snap, `snapshot ${snap} taken`,
               { disk_only: $("#snapshot-disk-only").checked, live: $("#snapshot-live").checked });
  $("#snapshot-name").value = "";
});

// ----------------------------------------------------------------- console
function closeConsole() {
  if (consoleWs) { consoleWs.close(); consoleWs = null; }
  if (term) { term.dispose(); term = null; }
  $("#console-view").hidden = true;
}

function openConsole(name) {
  closeConsole();
  $("#console-view").hidden = false;
  $("#console-name").textContent = name;
  term = new PyxenTerm.Terminal({ convertEol: false, scrollback: 5000, fontSize: 14 });
  fit = new PyxenTerm.FitAddon();
  term.loadAddon(fit);
  term.open($("#terminal"));
  fit.fit();
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/api/domains/${encodeURIComponent(name)}/console`);
  ws.binaryType = "arraybuffer";
  const enc = new TextEncoder();
  let gotData = false;
  ws.onmessage = (m) => { gotData = true; if (term) term.write(new Uint8Array(m.data)); };
  ws.onclose = (e) => {
    if (term) term.write("\r\n[console closed]\r\n");
    if (e.code === 1006 && !gotData) say(`${name}: the console is not available (another client may be attached)`, true);
  };
  term.onData((s) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(s)); });
  consoleWs = ws;
  term.focus();
}
$("#console-close").addEventListener("click", closeConsole);

// What the terminal shows, as text lines (for people copying and for tests).
window.pyxenConsoleText = () => {
  if (!term) return "";
  const buf = term.buffer.active, out = [];
  for (let i = 0; i < buf.length; i++) out.push(buf.getLine(i).translateToString(true));
  return out.join("\n");
};

// ------------------------------------------------------------------- start
async function start() {
  await refresh();
  $("#login-view").hidden = true;
  $("#main-view").hidden = false;
  $("#logout").hidden = false;
  if (!events) follow();
}

start().catch(() => {});
