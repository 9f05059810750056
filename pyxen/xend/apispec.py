"""The OpenAPI document served at ``/api/openapi.json``, generated from the
operation table (``pyxen.ops.table``): every route xend serves, with its
parameters, so the document, the routing and validation stay in step.
"""

from __future__ import annotations

from .. import __version__
from ..ops.table import OPS, Op

# Reachable without credentials (the login call itself).
PUBLIC = {o.path for o in OPS if o.public and o.documented}

_JSON_TYPES = {"vif": "object"}


def _schema(op: Op) -> dict:
    props = {}
    for p in op.body_params:
        prop = {"type": _JSON_TYPES.get(p.type, p.type), "description": p.help}
        if p.type == "array":
            prop["items"] = {"type": "string"}
        if p.type == "vif":
            prop["additionalProperties"] = {"type": "string"}
        if p.choices:
            prop["enum"] = list(p.choices)
        props[p.name] = prop
    req = [p.name for p in op.body_params if p.required]
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

    for o in OPS:
        if not o.documented:
            continue
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in o.path_params]
        params += [{"name": p.name, "in": "query", "required": False, "description": p.help,
                    "schema": {"type": "string", "enum": ["0", "1", "true", "false"]}}
                   for p in o.query_params]
        d = {"summary": o.summary, "operationId": o.name, "tags": [o.tag], "parameters": params,
             "responses": {"200": {"description": "ok"}, "400": bad, "401": err, "404": err, "409": err,
                           "500": err}}
        if o.content == "text/plain":
            d["responses"]["200"] = {"description": "Prometheus text exposition format",
                                     "content": {"text/plain": {"schema": {"type": "string"}}}}
        if o.public:
            d["security"] = []
        if o.status != 200:
            d["responses"][str(o.status)] = {"description": "created"}
        if o.job:
            d["x-long-job"] = True
            d["x-beside"] = list(o.beside)
        if o.method == "POST" and (o.body_params or o.body):
            d["requestBody"] = {"required": any(p.required for p in o.body_params),
                                "content": {"application/json": {"schema": _schema(o)}}}
        paths.setdefault(o.path, {})[o.method.lower()] = d
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
