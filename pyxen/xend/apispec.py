"""The table of xend's API resources: the one source for routing and for
the OpenAPI document served at ``/api/openapi.json``.

Each domain operation is a POST to ``/api/domains/{dom}/<op>`` with a JSON
body; the table gives its fields, so the document, validation messages and
``xm`` stay in step.
"""

from __future__ import annotations

from .. import __version__

# name -> (summary, {field: (json type, description, required)})
OPS: dict[str, tuple[str, dict]] = {
    "pause": ("Pause the domain's vCPUs.", {}),
    "unpause": ("Resume a paused domain.", {}),
    "destroy": ("Terminate the domain immediately.", {}),
    "shutdown": ("Ask the guest to power off, halt or reboot.", {
        "reason": ("string", "poweroff (default), halt or reboot", False),
        "wait": ("boolean", "return once the domain has gone", False)}),
    "reboot": ("Ask the guest to reboot.", {}),
    "sysrq": ("Send a magic SysRq key.", {"key": ("string", "one letter", True)}),
    "qemu-monitor": ("Run one command of the device model's monitor (QEMU's HMP: the manual's "
                     "Ctrl+Alt+2 console) and return its output.",
                     {"command": ("string", "e.g. info status", True)}),
    "rename": ("Rename the domain.", {"name": ("string", "the new name", True)}),
    "mem-set": ("Set the memory target (balloon).", {"memory": ("integer", "MiB", True)}),
    "mem-max": ("Set the memory ceiling.", {"memory": ("integer", "MiB", True)}),
    "vcpu-set": ("Set the number of online vCPUs.", {"vcpus": ("integer", "count", True)}),
    "vcpu-pin": ("Pin vCPUs to host CPUs.", {"vcpu": ("string", "a vCPU number or all", True),
                                            "cpus": ("string", "e.g. 0-3,^1 or all", True)}),
    "sched-credit": ("Set credit scheduler weight and cap.", {
        "weight": ("integer", "1-65535", False), "cap": ("integer", "% of one CPU, 0 = none", False)}),
    "sched-sedf": ("Set SEDF parameters.", {
        "period": ("number", "ms", False), "slice": ("number", "ms", False), "latency": ("number", "ms", False),
        "extratime": ("integer", "0 or 1", False), "weight": ("integer", "share", False)}),
    "save": ("Save the domain to a file and stop it (xm save); with checkpoint it keeps running.", {
        "file": ("string", "absolute path of the save file", True),
        "checkpoint": ("boolean", "keep the domain running (xm save -c)", False)}),
    "migrate": ("Move the domain to another host's xend (xm migrate); progress arrives as 'migrating' "
                "events on /api/events.", {
        "host": ("string", "the destination host (name or address)", True),
        "port": ("integer", "its relocation port (default xend-relocation-port)", False),
        "live": ("boolean", "pre-copy while the guest runs (xm migrate -l)", False),
        "resource": ("number", "bandwidth limit in MiB/s (xm migrate -r)", False),
        "downtime": ("integer", "the longest pause allowed at the switch-over, ms", False)}),
    "pci-attach": ("Hot-plug a host PCI device (bound to vfio-pci) into the domain (xm pci-attach).", {
        "dev": ("string", "[DDDD:]BB:SS.F", True),
        "vslot": ("string", "the guest slot, hex (default: QEMU picks one)", False)}),
    "pci-detach": ("Hot-unplug a PCI device from the domain (xm pci-detach).", {
        "dev": ("string", "[DDDD:]BB:SS.F", True)}),
    "dump-core": ("Dump the guest's memory as an ELF core.", {
        "file": ("string", "absolute path (default under var/xen/dump)", False),
        "live": ("boolean", "do not pause", False), "crash": ("boolean", "destroy afterwards", False),
        "reset": ("boolean", "reset afterwards", False)}),
}

# (method, path, summary, request fields or None, tag)
ROUTES: list[tuple[str, str, str, dict | None, str]] = [
    ("GET", "/api/host", "Host information (xm info).", None, "host"),
    ("GET", "/api/log", "xend's log (xm log).", None, "host"),
    ("GET", "/api/dmesg", "xend's message ring (xm dmesg).", None, "host"),
    ("POST", "/api/dmesg/clear", "Clear the message ring.", {}, "host"),
    ("GET", "/api/domains", "All domains, Domain-0 first (?long=1 adds the SXP, ?stats=1 I/O counters).",
     None, "domains"),
    ("POST", "/api/domains", "Create a domain from its SXP config (xm create).", {
        "config": ("string", "the domain's (vm ...) SXP", True),
        "paused": ("boolean", "leave it paused", False),
        "notes": ("array", "messages for xend's log", False)}, "domains"),
    ("POST", "/api/domains/from-file", "Create a domain from an uploaded config file: SXP (vm ...) or "
     "xl.cfg KEY=VALUE; Python configs are refused (xend never runs Python).", {
        "file": ("string", "the config file's text", True),
        "filename": ("string", "its name; the domain's name when the config has none", False),
        "paused": ("boolean", "leave it paused", False)}, "domains"),
    ("POST", "/api/domains/restore", "Restore a domain from a save file (xm restore).", {
        "file": ("string", "absolute path of the save file", True),
        "paused": ("boolean", "leave it paused", False)}, "domains"),
    ("GET", "/api/domains/{dom}", "One domain (name, id or uuid).", None, "domains"),
    ("GET", "/api/domains/{dom}/vcpus", "The domain's vCPUs (xm vcpu-list).", None, "domains"),
    ("GET", "/api/domains/{dom}/devices/{cls}", "The domain's devices of class vbd, vif, pci or vtpm.", None,
     "devices"),
    ("GET", "/api/pci/assignable", "Host PCI devices bound to vfio-pci (xm pci-list-assignable-devices).",
     None, "pci"),
    ("POST", "/api/pci/assignable", "Bind a host PCI device to vfio-pci, remembering its driver "
     "(xm pci-assignable-add).", {"dev": ("string", "[DDDD:]BB:SS.F", True)}, "pci"),
    ("POST", "/api/pci/assignable-remove", "Unbind a host PCI device from vfio-pci; with rebind, give it "
     "back to its earlier driver (xm pci-assignable-remove [-r]).", {
         "dev": ("string", "[DDDD:]BB:SS.F", True),
         "rebind": ("boolean", "bind the driver it had before", False)}, "pci"),
    ("GET", "/api/domains/{dom}/console", "The serial console as a websocket (binary frames).", None, "console"),
    ("GET", "/api/domains/{dom}/vnc", "The domain's VNC display as a websocket (for noVNC); a plain GET "
     "says whether there is one (409 when there is none).", None, "console"),
    ("POST", "/api/login", "Trade the API token for a browser session cookie (HttpOnly, SameSite=Strict).",
     {"token": ("string", "the contents of xend-http-token", True)}, "auth"),
    ("POST", "/api/logout", "End the browser session.", {}, "auth"),
    ("GET", "/api/events", "Domain state changes as server-sent events.", None, "events"),
    ("GET", "/metrics", "Prometheus metrics.", None, "metrics"),
    ("GET", "/api/openapi.json", "This document.", None, "meta"),
]


# Reachable without credentials (the login call itself).
PUBLIC = {"/api/login"}


def _schema(fields: dict) -> dict:
    props = {}
    for name, (typ, desc, _req) in fields.items():
        props[name] = {"type": typ, "description": desc}
        if typ == "array":
            props[name]["items"] = {"type": "string"}
    req = [n for n, (_, _, r) in fields.items() if r]
    s = {"type": "object", "properties": props, "additionalProperties": True}
    if req:
        s["required"] = req
    return s


MUTUAL_TLS = (
    "On TCP this xend requires mutual TLS (xend-http-auth cert): connect with HTTPS and a client "
    "certificate signed by the pool's CA (`pyxen cert NAME --client --out DIR` makes one: "
    "client-cert.pem, client-key.pem, and ca-cert.pem to check the server against); a client without "
    "one, or with one from another CA, is refused during the TLS handshake and logged.  No token or "
    "cookie is needed.  OpenAPI 3.0 has no security scheme type for this (3.1's is `mutualTLS`), so "
    "the document says it here and in x-mutualTLS, and lists no HTTP-level security.")


def openapi(client_certs: bool = False) -> dict:
    """The document; *client_certs* when xend runs with (xend-http-auth cert)."""
    err = {"description": "error", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
        "required": ["error", "code"]}}}}
    # aiohttp's HTTP layer answers a malformed request (e.g. a control
    # character in a header) with a text/plain 400 before xend sees it.
    bad = {"description": "invalid request", "content": {**err["content"], "text/plain": {
        "schema": {"type": "string"}}}}
    paths: dict = {}

    def op(method, path, summary, fields, tag):
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in ("dom", "cls") if "{" + p + "}" in path]
        o = {"summary": summary, "tags": [tag], "parameters": params,
             "responses": {"200": {"description": "ok"}, "400": bad, "401": err, "404": err, "409": err,
                           "500": err}}
        if path == "/metrics":
            o["responses"]["200"] = {"description": "Prometheus text exposition format",
                                     "content": {"text/plain": {"schema": {"type": "string"}}}}
        if path in PUBLIC:
            o["security"] = []
        if method == "POST" and path == "/api/domains":
            o["responses"]["201"] = {"description": "created"}
        if fields is not None and method == "POST":
            o["requestBody"] = {"required": bool([f for f in fields.values() if f[2]]),
                                "content": {"application/json": {"schema": _schema(fields)}}}
        paths.setdefault(path, {})[method.lower()] = o

    for route in ROUTES:
        op(*route)
    for name, (summary, fields) in OPS.items():
        op("POST", f"/api/domains/{{dom}}/{name}", summary, fields, "operations")
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "xend (pyxen)", "version": __version__,
                 "description": "xend's HTTP API: the operations of xm as JSON resources."},
        "components": {"securitySchemes": {
            "token": {"type": "http", "scheme": "bearer",
                      "description": "the contents of xend-http-token (TCP only: the Unix socket is root's)"},
            "session": {"type": "apiKey", "in": "cookie", "name": "xend_session",
                        "description": "a browser session from POST /api/login"}}},
        "security": [{"token": []}, {"session": []}],
        "paths": paths,
    }
    if client_certs:
        # The TLS layer authenticates; there is nothing to send in HTTP.
        doc["info"]["description"] += "\n\n" + MUTUAL_TLS
        doc["components"]["securitySchemes"] = {}
        doc["security"] = []
        doc["x-mutualTLS"] = {"type": "mutualTLS", "description": MUTUAL_TLS}
        for methods in paths.values():
            for o in methods.values():
                o.pop("security", None)
    return doc
