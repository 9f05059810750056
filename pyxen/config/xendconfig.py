"""xend-config.sxp: the table of xend options, their defaults, and the parser.

The table below is the single source of truth: the parser validates against
it, and the commented default file that ``xend start`` lays out on a fresh
root is generated from it.  Option names and defaults follow Xen 3.x's
XendOptions; pyxen's own additions are marked ``pyxen``.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

from . import sxp

log = logging.getLogger("pyxen.config")

TRUE_WORDS = {"yes", "y", "1", "on", "true", "t"}
FALSE_WORDS = {"no", "n", "0", "off", "false", "f"}


class XendConfigError(ValueError):
    pass


def parse_bool(text: str, what: str) -> bool:
    t = str(text).strip().lower()
    if t in TRUE_WORDS:
        return True
    if t in FALSE_WORDS:
        return False
    raise XendConfigError(f"{what}: expected yes or no, got {text!r}")


@dataclass(frozen=True)
class XendOption:
    name: str
    kind: str           # bool | int | str | choice
    default: object
    help: str
    choices: tuple = ()
    example: str | None = None   # value shown (commented) in the default file
    origin: str = "xen"          # xen | pyxen | inert (accepted, no effect on QEMU)


OPTIONS: tuple[XendOption, ...] = (
    XendOption("logfile", "str", "", "Log file (default <root>/var/log/xen/xend.log)."),
    XendOption("loglevel", "choice", "DEBUG", "Log level.",
               ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    XendOption("xend-http-server", "bool", False, "Serve the HTTP API on TCP xend-address:xend-port."),
    XendOption("xend-port", "int", 8000, "TCP port of the HTTP API."),
    XendOption("xend-http-auth", "choice", "token",
               "Authentication on the TCP HTTP API: 'token' (Authorization: Bearer <token from\n"
               "xend-http-token-file>), 'cert' (HTTPS with a client certificate signed by the pool's CA:\n"
               "`pyxen cert NAME --client --out DIR` makes one) or 'none' (only if you really mean it).",
               ("token", "cert", "none"), origin="pyxen"),
    XendOption("xend-http-tls", "bool", False,
               "Serve the TCP HTTP API over HTTPS with this host's certificate (the token then never\n"
               "crosses the network in the clear).  Always on with (xend-http-auth cert).", origin="pyxen"),
    XendOption("xend-http-ssl-cert-file", "str", "",
               "The HTTPS API's certificate (default <root>/etc/xen/pki/host-cert.pem, from `pyxen cert`).",
               origin="pyxen"),
    XendOption("xend-http-ssl-key-file", "str", "",
               "Its key (default <root>/etc/xen/pki/host-key.pem).", origin="pyxen"),
    XendOption("xend-http-ca-file", "str", "",
               "With (xend-http-auth cert): the CA client certificates must be signed by\n"
               "(default <root>/etc/xen/pki/ca-cert.pem, from `pyxen ca`).", origin="pyxen"),
    XendOption("xend-http-token-file", "str", "",
               "File holding the API token (default <root>/etc/xen/xend-http-token, created 0600 at start).",
               origin="pyxen"),
    XendOption("xend-address", "str", "localhost",
               "Address of the HTTP API; '' means all interfaces.  Xen's default was ''; pyxen's is\n"
               "localhost, so turning the TCP server on never exposes it by accident.",
               example="''"),
    XendOption("xend-unix-server", "bool", True,
               "Accepted for compatibility: the API is always on the Unix socket (xm needs it).",
               origin="inert"),
    XendOption("xend-unix-path", "str", "", "Unix socket path (default <root>/var/run/pyxen/xend.sock)."),
    XendOption("xend-unix-xmlrpc-server", "bool", True, "Accepted for compatibility; xm uses xend-unix-server.", origin="inert"),
    XendOption("xend-tcp-xmlrpc-server", "bool", False, "Accepted for compatibility; see xend-http-server.", origin="inert"),
    XendOption("xend-tcp-xmlrpc-server-address", "str", "localhost", "Accepted for compatibility.", origin="inert"),
    XendOption("xend-tcp-xmlrpc-server-port", "int", 8006, "Accepted for compatibility.", origin="inert"),
    XendOption("xend-tcp-xmlrpc-server-ssl-key-file", "str", "", "Accepted for compatibility.", origin="inert"),
    XendOption("xend-tcp-xmlrpc-server-ssl-cert-file", "str", "", "Accepted for compatibility.", origin="inert"),
    XendOption("xen-api-server", "str", "", "Accepted for compatibility (Xen-API is not served).", origin="inert"),
    XendOption("xend-udev-event-server", "bool", False, "Accepted for compatibility.", origin="inert"),
    XendOption("xend-relocation-server", "bool", False, "Accept incoming live migrations."),
    XendOption("xend-relocation-port", "int", 8002, "Relocation (migration) port."),
    XendOption("xend-relocation-address", "str", "", "Address the relocation server listens on; '' means all."),
    XendOption("xend-relocation-hosts-allow", "str", "",
               "Space-separated regular expressions of hosts allowed to migrate here; empty means all.",
               example="'^localhost$ ^localhost\\\\.localdomain$'"),
    XendOption("xend-relocation-tls", "bool", True,
               "Relocation runs inside TLS with a certificate on both ends, checked against the pool's CA "
               "(pyxen ca / pyxen cert). 'no' migrates in the clear and unauthenticated, as Xen 3.0 did; "
               "both hosts must agree.", origin="pyxen"),
    XendOption("xend-relocation-nbd-ports", "str", "",
               "Ports for the disks' NBD channel of `xm migrate --copy-storage` (QEMU to QEMU, TLS with a key made "
               "for the one migration), as LOW-HIGH: open them in a firewall between hosts. '' takes any free port.",
               example="'49152-49215'", origin="pyxen"),
    XendOption("xend-relocation-ca-file", "str", "",
               "The CA certificate relocation peers must be signed by (default <root>/etc/xen/pki/ca-cert.pem).",
               origin="pyxen"),
    XendOption("xend-relocation-ssl-server", "bool", False, "Accepted; relocation is always TLS unless configured otherwise.",
               origin="inert"),
    XendOption("xend-relocation-ssl-port", "int", 8003, "Accepted for compatibility.", origin="inert"),
    XendOption("xend-relocation-ssl", "bool", False, "Accepted for compatibility.", origin="inert"),
    XendOption("xend-relocation-server-ssl-key-file", "str", "",
               "This host's TLS key for relocation (default <root>/etc/xen/pki/host-key.pem)."),
    XendOption("xend-relocation-server-ssl-cert-file", "str", "",
               "This host's TLS certificate for relocation (default <root>/etc/xen/pki/host-cert.pem)."),
    XendOption("network-script", "str", "", "Script run at xend start and stop to set up the network, e.g. network-bridge.",
               example="network-bridge"),
    XendOption("vif-script", "str", "vif-bridge", "Script run for each vif coming online or going offline."),
    XendOption("dom0-min-mem", "int", 0, "MiB of host memory kept for Domain-0; domains that do not fit are refused.",
               example="196"),
    XendOption("enable-dom0-ballooning", "bool", True, "Accepted for compatibility.", origin="inert"),
    XendOption("dom0-cpus", "int", 0, "Accepted for compatibility (0 = all).", origin="inert"),
    XendOption("enable-dump", "bool", False,
               "Dump the core of a domain that crashes into <root>/var/xen/dump before its on_crash action."),
    XendOption("console-limit", "int", 1024, "KiB of unread console output kept per domain."),
    XendOption("vnc-listen", "str", "127.0.0.1", "Default VNC listen address for HVM guests."),
    XendOption("vncpasswd", "str", "", "Default VNC password."),
    XendOption("vnc-tls", "bool", False,
               "Serve HVM guests' VNC displays over TLS (VeNCrypt x509), with the certificates of\n"
               "vnc-x509-cert-dir, or this host's certificate of the pool CA (`pyxen cert`)."),
    XendOption("vnc-x509-cert-dir", "str", "",
               "With (vnc-tls yes): ca-cert.pem, server-cert.pem, server-key.pem (default\n"
               "<root>/etc/xen/vnc; without a server-cert.pem there, etc/xen/pki's host certificate is used)."),
    XendOption("vnc-x509-verify", "bool", False,
               "With (vnc-tls yes): VNC clients must show a certificate signed by that CA\n"
               "(`pyxen cert NAME --client --out DIR`)."),
    XendOption("keymap", "str", "", "Default keymap for VNC/SDL."),
    XendOption("device-create-timeout", "int", 100, "Seconds to wait for a device to appear."),
    XendOption("device-destroy-timeout", "int", 100, "Seconds to wait for a device to go."),
    XendOption("external-migration-tool", "str", "", "Accepted for compatibility (vTPM).", origin="inert"),
    XendOption("xend-domains-path", "str", "", "Accepted for compatibility; state lives under <root>/var/lib/pyxen.", origin="inert"),
    XendOption("xend-state-path", "str", "", "Accepted for compatibility; see xend-domains-path.", origin="inert"),
    XendOption("xend-storage-path", "str", "", "Accepted for compatibility; see xend-domains-path.", origin="inert"),
    XendOption("xend-security-path", "str", "", "Accepted for compatibility.", origin="inert"),
    XendOption("qemu-dm-logrotate-count", "int", 10, "Accepted for compatibility.", origin="inert"),
    XendOption("resource-label-change-script", "str", "", "Accepted for compatibility (ACM).", origin="inert"),
    XendOption("xsm_module_name", "str", "dummy", "Accepted for compatibility (XSM).", origin="inert"),
    XendOption("xend-domain-lock", "bool", False,
               "Take a cluster-wide lock per domain (its owner key in etcd, on this host's lease), so a\n"
               "domain never runs on two hosts: a create or restore of a domain (by uuid or name) that\n"
               "runs elsewhere is refused naming that host.  On by default when xend-cluster-etcd is set\n"
               "((xend-domain-lock no) there turns them off, with a warning at every start: two hosts may\n"
               "then run one domain from one disk);\n"
               "without a cluster there is no other host to lock against and it has no effect."),
    XendOption("xend-domain-lock-path", "str", "/var/lib/xen/images/vm_locks",
               "Accepted for compatibility: the domain locks live in etcd (xend-cluster-etcd), not in\n"
               "lock files on shared storage.", origin="inert"),
    # A cluster of xends on etcd (pyxen/xend/cluster.py, docs/cluster.md)
    XendOption("xend-cluster-etcd", "str", "",
               "The etcd cluster this host joins: its client URLs, space-separated.  '' means no cluster:\n"
               "this host keeps its state in its own files, as always.  xend refuses to start if none of\n"
               "them answers.", example="'https://10.0.0.1:2379 https://10.0.0.2:2379 https://10.0.0.3:2379'",
               origin="pyxen"),
    XendOption("xend-cluster-name", "str", "",
               "This host's name in the cluster (what `xm migrate dom NAME` and placement call it);\n"
               "'' means the hostname.  Two live hosts cannot share one.", example="host-a", origin="pyxen"),
    XendOption("xend-cluster-address", "str", "",
               "The address other hosts reach this one at (relocation, the API); '' means the address\n"
               "this host talks to etcd from.", example="10.0.0.11", origin="pyxen"),
    XendOption("xend-cluster-tls-ca", "str", "",
               "CA certificate that etcd's server certificates must be signed by; '' means the pool's\n"
               "(etc/xen/pki/ca-cert.pem, as `pyxen ca` made it).", origin="pyxen"),
    XendOption("xend-cluster-tls-cert", "str", "",
               "Client certificate xend shows etcd (--client-cert-auth); '' means this host's certificate\n"
               "(etc/xen/pki/host-cert.pem, from `pyxen cert`).", origin="pyxen"),
    XendOption("xend-cluster-tls-key", "str", "",
               "Key of xend-cluster-tls-cert; '' means etc/xen/pki/host-key.pem.", origin="pyxen"),
    XendOption("xend-cluster-lease-ttl", "int", 8,
               "Seconds of this host's etcd lease: its host record and its domains' locks vanish this\n"
               "long after its last keep-alive (renewed every TTL/4 s, a failed one retried at once).",
               origin="pyxen"),
    XendOption("xend-cluster-fence", "choice", "pause",
               "What this host does to its domains when its keep-alive has not succeeded for\n"
               "lease TTL minus xend-cluster-fence-margin seconds (on its own clock): 'pause' them\n"
               "(resumed once it holds their locks again) or 'destroy' them.", ("pause", "destroy"),
               origin="pyxen"),
    XendOption("xend-cluster-fence-margin", "int", 3,
               "Seconds before the lease TTL at which this host fences itself (see xend-cluster-fence);\n"
               "between 1 and the TTL minus 1.", origin="pyxen"),
    XendOption("xend-cluster-grace", "int", 1,
               "Seconds another host waits after a domain's lock is gone before it may start the\n"
               "domain (on_host_failure='restart'): with the fence margin it covers the failed host's\n"
               "fence check, one blocked etcd call and the kill (docs/cluster.md).",
               origin="pyxen"),
    # pyxen's own options
    XendOption("accel", "choice", "auto",
               "Accelerator: 'auto' proves KVM with a short probe boot (verdict cached), else uses TCG.",
               ("auto", "kvm", "tcg"), origin="pyxen"),
    XendOption("accel-probe-timeout", "int", 12, "Seconds the KVM probe boot may take before KVM is declared broken.",
               origin="pyxen"),
    XendOption("minimum-restart-time", "int", 60,
               "Seconds a domain must have run for on_crash=restart to restart it (else it is destroyed: no crash loops).",
               origin="pyxen"),
    XendOption("qemu-binary", "str", "qemu-system-x86_64", "QEMU binary to run guests with.", origin="pyxen"),
    XendOption("qemu-user", "str", "",
               "Run every QEMU as this one user (a name, uid or uid:gid) instead of each domain's own\n"
               "uid (qemu-uid-base).  'root' turns confinement off (xend warns at start): QEMU then\n"
               "runs as root, still without capabilities and under its seccomp sandbox.",
               example="pyxen-qemu", origin="pyxen"),
    XendOption("qemu-uid-base", "int", 1900000000,
               "Each domain's QEMU runs as uid and gid qemu-uid-base + domid, with no capabilities\n"
               "and no way to gain any: no QEMU can reach another domain's disks, taps or /proc\n"
               "entries.  xend refuses to start if any id of base .. base+65535 is a real account.",
               origin="pyxen"),
    XendOption("qemu-monitor-host-access", "bool", False,
               "Let xm qemu-monitor run monitor commands that open host paths or start programs\n"
               "(migrate exec:/file:, drive_add file=, screendump FILE, chardev-add file, ...).  Off:\n"
               "they are refused with one line; QEMU's own sandbox refuses spawning anyway.",
               origin="pyxen"),
    XendOption("xend-console-server", "bool", False,
               "Also export each domain's console on TCP port 9600+domid (or the domain's 'console' port).",
               origin="pyxen"),
    XendOption("xend-console-address", "str", "localhost", "Address the TCP consoles listen on.", origin="pyxen"),
    # Limits on what an unauthenticated peer or a guest can make xend hold
    # (pyxen/xend/preauth.py, pyxen/xend/consolelog.py; docs/robustness.md).
    XendOption("xend-preauth-max-connections", "int", 64,
               "Unauthenticated connections (TLS handshakes, HTTP requests without credentials, relocation\n"
               "peers before their first message) held at once, per listener; more are closed at once.",
               origin="pyxen"),
    XendOption("xend-preauth-max-per-peer", "int", 8,
               "Unauthenticated connections held at once from one address, per listener.", origin="pyxen"),
    XendOption("xend-preauth-timeout", "int", 10,
               "Seconds an unauthenticated connection may take to finish its TLS handshake, its request\n"
               "headers and body, or (relocation) its first message.", origin="pyxen"),
    XendOption("xend-preauth-max-body", "int", 65536,
               "Bytes of request body read before the request is authenticated (e.g. POST /api/login).",
               origin="pyxen"),
    XendOption("console-log-max-size", "int", 2048,
               "KiB a domain's console log may grow to before it is rotated (as libvirt's virtlogd: 2 MiB).",
               origin="pyxen"),
    XendOption("console-log-max-files", "int", 3,
               "Console log files kept per domain, the current one included (virtlogd keeps 3).", origin="pyxen"),
    XendOption("vnet-dev", "str", "",
               "Interface vnets tunnel over (VXLAN underlay); '' means the interface of the default route.",
               example="eth0", origin="pyxen"),
    XendOption("vnet-group", "str", "224.10.0.1", "Multicast group vnets flood broadcasts to (Xen's vnet group).",
               origin="pyxen"),
    XendOption("vnet-port", "int", 1798, "UDP port of vnet traffic (Xen's vnet port).", origin="pyxen"),
    XendOption("vnet-peers", "str", "",
               "Space-separated addresses of hosts that get every vnet broadcast by unicast too, "
               "for networks that do not carry multicast (what 'vn peer-add' did).",
               example="'192.0.2.2 192.0.2.3'", origin="pyxen"),
)

BY_NAME = {o.name: o for o in OPTIONS}


def _convert(opt: XendOption, raw: str):
    what = f"({opt.name} ...)"
    if opt.kind == "bool":
        return parse_bool(raw, what)
    if opt.kind == "int":
        try:
            return int(str(raw), 0)
        except ValueError:
            raise XendConfigError(f"{what}: expected an integer, got {raw!r}") from None
    if opt.kind == "choice":
        if raw not in opt.choices:
            raise XendConfigError(f"{what}: expected one of {', '.join(opt.choices)}, got {raw!r}")
        return raw
    return str(raw)


class XendConfig:
    """Parsed xend-config.sxp: option values with defaults filled in."""

    def __init__(self, values: dict | None = None, unknown: list[str] | None = None, path: Path | None = None):
        self.values = {o.name: o.default for o in OPTIONS}
        self.values.update(values or {})
        self.given = set(values or {})      # set in the file (not defaults)
        self.unknown = unknown or []
        self.path = path

    def __getitem__(self, name: str):
        return self.values[name]

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    @classmethod
    def parse(cls, text: str, filename: str = "xend-config.sxp") -> "XendConfig":
        try:
            forms = sxp.parse(text)
        except sxp.SxpError as e:
            raise XendConfigError(f"{filename}: {e}") from None
        values, unknown = {}, []
        for form in forms:
            if not isinstance(form, list) or not form or not isinstance(form[0], str):
                raise XendConfigError(f"{filename}: expected (option value), got {sxp.to_string(form)}")
            name = form[0]
            opt = BY_NAME.get(name)
            if opt is None:
                unknown.append(name)
                continue
            if name in values:
                continue   # Xen's child_value takes the first occurrence
            raw = form[1] if len(form) > 1 else ""
            if isinstance(raw, list):
                raw = sxp.to_string(raw)
            try:
                values[name] = _convert(opt, raw)
            except XendConfigError as e:
                raise XendConfigError(f"{filename}: {e}") from None
        return cls(values, unknown)

    @classmethod
    def load(cls, path: Path) -> "XendConfig":
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            return cls(path=path)
        except OSError as e:
            raise XendConfigError(f"{path}: {e.strerror}") from None
        cfg = cls.parse(text, str(path))
        cfg.path = path
        return cfg

    def warnings(self) -> list[str]:
        """What the administrator should hear at ``xend start``: options
        xend does not know (with the nearest known name: a typo must not
        pass for a setting) and options set that do nothing here."""
        out = []
        where = f"{self.path}: " if self.path else "xend-config: "
        for name in self.unknown:
            near = difflib.get_close_matches(name, BY_NAME, n=1, cutoff=0.75)
            hint = f"; did you mean ({near[0]} ...)?" if near else ""
            out.append(f"{where}unknown option ({name} ...) ignored{hint}")
        for o in OPTIONS:
            if o.origin == "inert" and self.values[o.name] != o.default:
                out.append(f"{where}({o.name} {_show(self.values[o.name])}) is accepted but has no effect "
                           f"with pyxen")
        return out

    def log_warnings(self) -> None:
        for text in self.warnings():
            log.warning("%s", text)


def _show(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    s = str(value)
    return sxp.to_string(s)


def default_file_text() -> str:
    """The commented xend-config.sxp laid out on a fresh root."""
    out = [
        "# -*- sh -*-",
        "#",
        "# xend configuration file (pyxen).",
        "#",
        "# Each option is shown commented out with its default value; uncomment",
        "# and change the ones you need.  The file is SXP: (option value).",
        "#",
    ]
    for o in OPTIONS:
        out.append("")
        for line in o.help.split("\n"):
            out.append(f"# {line}")
        if o.choices:
            out.append(f"# One of: {' '.join(o.choices)}.")
        out.append(f"#({o.name} {_show(o.default)})")
        if o.example is not None:
            out.append(f"#({o.name} {o.example})")
    out.append("")
    return "\n".join(out)
