// One domain's screen with noVNC over /api/domains/<name>/vnc (the session
// cookie authenticates the websocket).  xend answers a plain GET of that URL
// with why there is no display (e.g. a PV guest), which we show instead of a
// bare websocket failure.
"use strict";

const name = new URLSearchParams(location.search).get("dom") || "";
const status = document.getElementById("status");
document.getElementById("dom").textContent = name;
document.title = `xend — ${name} screen`;
const url = `/api/domains/${encodeURIComponent(name)}/vnc`;

async function connect() {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) {                      // e.g. 409: a PV guest has no display
    let msg = `HTTP ${r.status}`;
    try { msg = (await r.json()).error; } catch (e) { /* not JSON */ }
    status.textContent = msg;
    status.className = "error";
    return;
  }
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const rfb = new PyxenRFB(document.getElementById("screen"), `${proto}//${location.host}${url}`,
                           { wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { status.textContent = "connected"; status.className = ""; });
  rfb.addEventListener("disconnect", (e) => {
    status.textContent = e.detail.clean ? "disconnected" : "connection lost";
    status.className = "error";
  });
  window.pyxenRfb = rfb;
}

connect().catch((e) => { status.textContent = e.message; status.className = "error"; });
