"""xend's operation table: every HTTP route xend serves, one entry each.

An entry gives the route (method and path), its typed parameters, the
handler xend runs (a ``module:function`` string that xend resolves when it
starts, so that xm can import this table without importing xend), whether it
is a long job and which operations may run beside it on the same domain,
and how the schemathesis run exercises it.  From this table come xend's
aiohttp routing (``pyxen.xend.api``), request validation for xm and xend
(``pyxen.ops.validate``), ``/api/openapi.json`` (``pyxen.xend.apispec``),
the fuzz target's route list and the schemathesis runs; xm's subcommands
(``pyxen.ops.commands``) name the operation each one drives.

Only the standard library is imported here: xm loads this on every start.
"""

from __future__ import annotations

from .record import Record


class Param(Record):
    name: str
    type: str                # string | integer | number | boolean | array | object | vif
    help: str
    required: bool = False
    default: object = None
    where: str = "body"      # body (JSON object) | query (?name=1)
    choices: tuple = ()
    range: tuple | None = None    # (lo, hi), inclusive, for integers
    positive: bool = False        # numbers: > 0


class Op(Record):
    name: str
    method: str
    path: str
    summary: str
    handler: str             # "pyxen.xend.handlers.host:get_host"; "static" for the page's files
    params: tuple[Param, ...] = ()
    tag: str = "operations"
    status: int = 200        # on success
    # Acts on an existing guest: Domain-0 is refused ("Domain 0 cannot be
    # <verb>") and the {dom} reference is looked up before the handler runs.
    domain: bool = False
    verb: str = ""
    job: bool = False        # a long job, recorded in the domain (save, migrate)
    beside: tuple[str, ...] = ()   # what may run on the same domain while this job runs
    public: bool = False     # reachable without credentials
    documented: bool = True  # in /api/openapi.json (the page's own files are not API)
    body: bool = False       # takes a JSON body even with no parameters
    # How tests/system/test_web.py's schemathesis run exercises it:
    # guest (a real paused guest), absent (a domain that does not exist: the
    # operation would end or reshape the guest), host (host-wide resources),
    # create (random configs), negative (only invalid requests: a valid one
    # would change the host, e.g. make a bridge), stream (an endless event
    # stream: covered by tests/system/test_api.py, not schemathesis).
    fuzz: str = "guest"
    content: str = "application/json"

    @property
    def path_params(self) -> list[str]:
        return [seg[1:-1] for seg in self.path.split("/") if seg.startswith("{") and seg.endswith("}")]

    @property
    def body_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.where == "body")

    @property
    def query_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.where == "query")


P = Param
_DEV = "[DDDD:]BB:SS.F"
_LONG = P("long", "boolean", "add the domain's SXP", where="query")

# What may run on a domain while a save or a migration is in flight: the
# reads, and the operations Domain does not refuse as busy (they touch no
# state the job depends on).
_BESIDE_JOB = ("domain", "domains", "vcpus", "devices", "console", "vnc", "mem-max", "rename",
               "qemu-monitor", "sched-sedf", "snapshots")


# Beside a snapshot create or revert: the reads only (a rename or a memory
# ceiling would change what the snapshot records).
_BESIDE_SNAP = ("domain", "domains", "vcpus", "devices", "console", "vnc", "snapshots")


def _dom_op(name, summary, handler, *params, verb="", job=False, fuzz="guest", beside=()):
    return Op(name, "POST", f"/api/domains/{{dom}}/{name}", summary,
              f"pyxen.xend.handlers.domain_ops:{handler}", tuple(params), domain=True,
              verb=verb or name, job=job, fuzz=fuzz, beside=beside, body=True)


OPS: tuple[Op, ...] = (
    # ------------------------------------------------------------ the page
    Op("index", "GET", "/", "The web console (a redirect to /ui/index.html).", "pyxen.xend.web:index",
       tag="web", public=True, documented=False),
    Op("ui", "GET", "/ui/", "The web console's static files.", "static", tag="web", public=True,
       documented=False),
    Op("login", "POST", "/api/login", "Trade the API token for a browser session cookie (HttpOnly, "
       "SameSite=Strict).", "pyxen.xend.web:login",
       (P("token", "string", "the contents of xend-http-token", True),), tag="auth", public=True, fuzz="host"),
    Op("logout", "POST", "/api/logout", "End the browser session.", "pyxen.xend.web:logout", tag="auth",
       body=True, fuzz="host"),
    # ---------------------------------------------------------------- host
    Op("host", "GET", "/api/host", "Host information (xm info).", "pyxen.xend.handlers.host:get_host",
       tag="host", fuzz="host"),
    Op("log", "GET", "/api/log", "xend's log (xm log).", "pyxen.xend.handlers.host:get_log", tag="host",
       fuzz="host"),
    Op("dmesg", "GET", "/api/dmesg", "xend's message ring (xm dmesg).", "pyxen.xend.handlers.host:get_dmesg",
       tag="host", fuzz="host"),
    Op("dmesg-clear", "POST", "/api/dmesg/clear", "Clear the message ring.",
       "pyxen.xend.handlers.host:clear_dmesg", tag="host", body=True, fuzz="host"),
    Op("events", "GET", "/api/events", "Domain state changes as server-sent events.",
       "pyxen.xend.handlers.streams:events", tag="events", fuzz="stream", content="text/event-stream"),
    Op("metrics", "GET", "/metrics", "Prometheus metrics.", "pyxen.xend.handlers.host:metrics", tag="metrics",
       fuzz="host", content="text/plain"),
    Op("openapi", "GET", "/api/openapi.json", "This document.", "pyxen.xend.handlers.host:get_openapi",
       tag="meta", fuzz="host"),
    # ------------------------------------------------------------- domains
    Op("domains", "GET", "/api/domains", "All domains, Domain-0 first (?long=1 adds the SXP, ?stats=1 "
       "I/O counters).", "pyxen.xend.handlers.domains:list_domains",
       (_LONG, P("stats", "boolean", "add I/O counters", where="query"),
        P("cluster", "boolean", "every cluster host's domains, each with its host (xm list --cluster); "
          "on a host not in a cluster, this host's", where="query")), tag="domains", fuzz="host"),
    Op("create", "POST", "/api/domains", "Create a domain from its SXP config (xm create).",
       "pyxen.xend.handlers.domains:create",
       (P("config", "string", "the domain's (vm ...) SXP", True),
        P("paused", "boolean", "leave it paused"),
        P("notes", "array", "messages for xend's log"),
        P("host", "string", "the cluster host to run it on (default: placement picks the host with the most "
          "free memory that has its bridges, disks and kernel)")), tag="domains", status=201, fuzz="create"),
    Op("create-from-file", "POST", "/api/domains/from-file", "Create a domain from an uploaded config file: "
       "SXP (vm ...) or xl.cfg KEY=VALUE; Python configs are refused (xend never runs Python).",
       "pyxen.xend.web:create_from_file",
       (P("file", "string", "the config file's text", True),
        P("filename", "string", "its name; the domain's name when the config has none"),
        P("paused", "boolean", "leave it paused")), tag="domains", status=201, fuzz="create"),
    Op("restore", "POST", "/api/domains/restore", "Restore a domain from a save file (xm restore).",
       "pyxen.xend.handlers.domains:restore",
       (P("file", "string", "absolute path of the save file", True),
        P("paused", "boolean", "leave it paused")), tag="domains", status=201, fuzz="create"),
    Op("domain", "GET", "/api/domains/{dom}", "One domain (name, id or uuid).",
       "pyxen.xend.handlers.domains:get_domain", (_LONG,), tag="domains"),
    Op("vcpus", "GET", "/api/domains/{dom}/vcpus", "The domain's vCPUs (xm vcpu-list).",
       "pyxen.xend.handlers.domains:vcpus", tag="domains"),
    Op("devices", "GET", "/api/domains/{dom}/devices/{cls}", "The domain's devices of class vbd, vif, pci or "
       "vtpm.", "pyxen.xend.handlers.devices:devices", tag="devices"),
    Op("device-attach", "POST", "/api/domains/{dom}/devices/{cls}", "Hot-plug a device of class vif "
       "(xm network-attach).", "pyxen.xend.handlers.devices:attach",
       (P("config", "vif", "the vif's settings, e.g. {\"bridge\": \"xenbr0\", \"mac\": \"00:16:3e:..\"}"),),
       tag="devices", status=201, body=True),
    Op("device-detach", "DELETE", "/api/domains/{dom}/devices/{cls}/{dev}", "Hot-unplug a device of class vif "
       "(xm network-detach).", "pyxen.xend.handlers.devices:detach",
       (P("force", "boolean", "remove the backend even if the guest does not release it", where="query"),),
       tag="devices"),
    Op("console", "GET", "/api/domains/{dom}/console", "The serial console as a websocket (binary frames).",
       "pyxen.xend.handlers.streams:console", tag="console"),
    Op("vnc", "GET", "/api/domains/{dom}/vnc", "The domain's VNC display as a websocket (for noVNC); a plain "
       "GET says whether there is one (409 when there is none).", "pyxen.xend.web:vnc", tag="console"),
    # ------------------------------------------------------ domain operations
    _dom_op("pause", "Pause the domain's vCPUs.", "pause", verb="paused"),
    _dom_op("unpause", "Resume a paused domain.", "unpause", verb="unpaused"),
    _dom_op("destroy", "Terminate the domain immediately.", "destroy", verb="destroyed", fuzz="absent"),
    _dom_op("shutdown", "Ask the guest to power off, halt or reboot.", "shutdown",
            P("reason", "string", "poweroff (default), halt or reboot", default="poweroff",
              choices=("poweroff", "halt", "reboot")),
            P("wait", "boolean", "return once the domain has gone"),
            P("timeout", "number", "with wait: give up after this many seconds"), fuzz="absent"),
    _dom_op("reboot", "Ask the guest to reboot.", "reboot", verb="rebooted", fuzz="absent"),
    _dom_op("sysrq", "Send a magic SysRq key.", "sysrq", P("key", "string", "one letter", True), fuzz="absent"),
    _dom_op("qemu-monitor", "Run one command of the device model's monitor (QEMU's HMP: the manual's "
            "Ctrl+Alt+2 console) and return its output.", "qemu_monitor",
            P("command", "string", "e.g. info status", True)),
    _dom_op("rename", "Rename the domain.", "rename", P("name", "string", "the new name", True), fuzz="absent"),
    _dom_op("mem-set", "Set the memory target (balloon).", "mem_set", P("memory", "integer", "MiB", True),
            fuzz="absent"),
    _dom_op("mem-max", "Set the memory ceiling.", "mem_max", P("memory", "integer", "MiB", True),
            fuzz="absent"),
    _dom_op("vcpu-set", "Set the number of online vCPUs.", "vcpu_set", P("vcpus", "integer", "count", True),
            fuzz="absent"),
    _dom_op("vcpu-pin", "Pin vCPUs to host CPUs.", "vcpu_pin", P("vcpu", "string", "a vCPU number or all", True),
            P("cpus", "string", "e.g. 0-3,^1 or all", True)),
    _dom_op("sched-credit", "Set credit scheduler weight and cap.", "sched_credit",
            P("weight", "integer", "1-65535"), P("cap", "integer", "% of one CPU, 0 = none")),
    _dom_op("sched-sedf", "Set SEDF parameters.", "sched_sedf",
            P("period", "number", "ms"), P("slice", "number", "ms"), P("latency", "number", "ms"),
            P("extratime", "integer", "0 or 1"), P("weight", "integer", "share")),
    _dom_op("save", "Save the domain to a file and stop it (xm save); with checkpoint it keeps running.",
            "save", P("file", "string", "absolute path of the save file", True),
            P("checkpoint", "boolean", "keep the domain running (xm save -c)"), verb="saved", job=True,
            beside=_BESIDE_JOB),
    _dom_op("migrate", "Move the domain to another host's xend (xm migrate), or to a new QEMU on this "
            "host (a new domid); progress arrives as 'migrating' events on /api/events.", "migrate",
            P("host", "string", "the destination host (name or address)", True),
            P("port", "integer", "its relocation port (default xend-relocation-port)", range=(1, 65535)),
            P("live", "boolean", "pre-copy while the guest runs (xm migrate -l)"),
            P("resource", "number", "bandwidth limit in MiB/s (xm migrate -r)", positive=True),
            P("downtime", "integer", "the longest pause allowed at the switch-over, ms", range=(1, 60000)),
            P("copy_storage", "boolean", "copy the domain's local (not shared) disks to the target "
              "(xm migrate --copy-storage)"),
            P("shared_disks", "string", "with copy_storage: guest devices (comma-separated, e.g. xvdb,xvdc) "
              "on storage both hosts see, not copied whatever the detection says (xm migrate --shared-disk)"),
            verb="migrated", job=True, beside=_BESIDE_JOB),
    _dom_op("pci-attach", "Hot-plug a host PCI device (bound to vfio-pci) into the domain (xm pci-attach).",
            "pci_attach", P("dev", "string", _DEV, True),
            P("vslot", "string", "the guest slot, hex (default: QEMU picks one)")),
    _dom_op("pci-detach", "Hot-unplug a PCI device from the domain (xm pci-detach).", "pci_detach",
            P("dev", "string", _DEV, True)),
    _dom_op("dump-core", "Dump the guest's memory as an ELF core.", "dump_core",
            P("file", "string", "absolute path (default under var/xen/dump)"),
            P("live", "boolean", "do not pause"), P("crash", "boolean", "destroy afterwards"),
            P("reset", "boolean", "reset afterwards"), fuzz="absent"),
    _dom_op("block-attach", "Hot-plug a virtual block device (xm block-attach).", "block_attach",
            P("uname", "string", "the backend, e.g. file:/img or phy:/dev/vg/lv", True),
            P("vdev", "string", "the guest device, e.g. xvdb", True),
            P("mode", "string", "r or w", True),
            P("backend", "string", "the backend domain (always 0)", default="0")),
    _dom_op("block-detach", "Hot-unplug a virtual block device (xm block-detach).", "block_detach",
            P("dev", "string", "the device: its number or vdev", True),
            P("force", "boolean", "drop it from the config even if the guest does not release it"),
            fuzz="absent"),
    _dom_op("snapshot-create", "Take a snapshot of the domain's disks and memory at one instant "
            "(xm snapshot-create).", "snapshot_create",
            P("name", "string", "the snapshot's name: 1-64 letters, digits, '.', '_', '+', '-'", True),
            P("disk_only", "boolean", "disks only, no memory (a revert boots the guest on them)"),
            P("live", "boolean", "copy the memory while the guest runs; it pauses only for the last pass"),
            verb="snapshotted", job=True, beside=_BESIDE_SNAP, fuzz="absent"),
    _dom_op("snapshot-revert", "Return the domain to one of its snapshots (xm snapshot-revert).",
            "snapshot_revert", P("name", "string", "the snapshot", True), verb="reverted", job=True,
            beside=_BESIDE_SNAP, fuzz="absent"),
    _dom_op("snapshot-delete", "Delete one of the domain's snapshots; its children move up to its "
            "parent (xm snapshot-delete).", "snapshot_delete", P("name", "string", "the snapshot", True),
            fuzz="absent"),
    Op("snapshots", "GET", "/api/domains/{dom}/snapshots", "The domain's snapshots as a tree: name, time, "
       "kind, size, parent (xm snapshot-list).", "pyxen.xend.handlers.domain_ops:snapshot_list",
       domain=True, verb="snapshots", tag="snapshots"),
    # Registered after every named operation: the rest of /api/domains/{dom}/*.
    Op("unknown-op", "POST", "/api/domains/{dom}/{op}", "Any other operation name: refused (400).",
       "pyxen.xend.handlers.domain_ops:unknown", domain=True, body=True),
    # ------------------------------------------------------ host PCI devices
    Op("pci-assignable", "GET", "/api/pci/assignable", "Host PCI devices bound to vfio-pci "
       "(xm pci-list-assignable-devices).", "pyxen.xend.handlers.host:pci_assignable", tag="pci", fuzz="host"),
    Op("pci-assignable-add", "POST", "/api/pci/assignable", "Bind a host PCI device to vfio-pci, remembering "
       "its driver (xm pci-assignable-add).", "pyxen.xend.handlers.host:pci_assignable_add",
       (P("dev", "string", _DEV, True),), tag="pci", fuzz="host"),
    Op("pci-assignable-remove", "POST", "/api/pci/assignable-remove", "Unbind a host PCI device from "
       "vfio-pci; with rebind, give it back to its earlier driver (xm pci-assignable-remove [-r]).",
       "pyxen.xend.handlers.host:pci_assignable_remove",
       (P("dev", "string", _DEV, True), P("rebind", "boolean", "bind the driver it had before")),
       tag="pci", fuzz="host"),
    # -------------------------------------------------------------- cluster
    Op("hosts", "GET", "/api/hosts", "The cluster's hosts: address, state, free memory, vCPUs, domains, lease "
       "age (xm host-list); 409 on a host not in a cluster.", "pyxen.xend.handlers.cluster:list_hosts",
       tag="cluster", fuzz="host"),
    Op("host-evacuate", "POST", "/api/hosts/{host}/evacuate", "Live-migrate every domain of this host to the "
       "others, placed one by one (xm host-evacuate); what cannot go is listed with the reason.",
       "pyxen.xend.handlers.cluster:evacuate", tag="cluster", body=True, fuzz="host"),
    Op("host-maintenance", "POST", "/api/hosts/{host}/maintenance", "Put a host in lasting maintenance, or "
       "end it (xm host-maintenance; host-evacuate starts it): placement and failover pass the host over, "
       "its domains keep running.", "pyxen.xend.handlers.cluster:maintenance",
       (P("on", "boolean", "true: in maintenance; false: end it", True),), tag="cluster", fuzz="host"),
    # ---------------------------------------------------------------- vnets
    Op("vnets", "GET", "/api/vnets", "All vnets (xm vnet-list).", "pyxen.xend.handlers.vnets:list_vnets",
       tag="vnets", fuzz="host"),
    Op("vnet-create", "POST", "/api/vnets", "Create a vnet from its SXP (xm vnet-create): a bridge and a "
       "VXLAN interface on this host.", "pyxen.xend.handlers.vnets:create_vnet",
       (P("config", "string", "the vnet's (vnet (id N) ...) SXP", True),), tag="vnets", status=201,
       fuzz="negative"),
    Op("vnet", "GET", "/api/vnets/{vnet}", "One vnet (xm vnet-list ID).", "pyxen.xend.handlers.vnets:get_vnet",
       tag="vnets", fuzz="host"),
    Op("vnet-delete", "DELETE", "/api/vnets/{vnet}", "Delete a vnet (xm vnet-delete).",
       "pyxen.xend.handlers.vnets:delete_vnet", tag="vnets", fuzz="host"),
)

BY_NAME: dict[str, Op] = {o.name: o for o in OPS}
FUZZ_KINDS = ("guest", "absent", "host", "create", "negative", "stream")


def op(name: str) -> Op:
    return BY_NAME[name]
