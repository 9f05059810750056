"""xm create, and showing an HVM domain's screen (vncviewer, vncviewer=1)."""

from __future__ import annotations

import os
import sys

from ..config import sxp
from ..config.errors import ConfigError
from .client import XmError
from .commands import dom_path as _dom

def cmd_create(ctx, opts, args):
    # Imported here: the config evaluator is the heaviest part of xm and
    # only create needs it (keeps every other command quick to start).
    from ..config import xmconfig
    from ..config.options import help_text as config_help
    if "help_config" in opts:
        sys.stdout.write(config_help())
        return 0
    quiet = "quiet" in opts
    paths = ctx.paths
    search = (opts.get("path") or f".:{paths.etc}").split(":")
    if "config" in opts:
        fn = opts["config"]
        try:
            with open(fn) as f:
                text = f.read()
            value = sxp.from_string(text)
        except OSError as e:
            raise XmError(f"Unable to open config file: {fn}: {e.strerror}") from None
        except sxp.SxpError as e:
            raise XmError(str(e.with_file(fn))) from None
        from ..config.domain import DomainConfig
        try:
            cfg = DomainConfig.from_sxp(value)
        except ConfigError as e:
            raise XmError(f"{fn}: {e}") from None
        path = fn
    else:
        try:
            cfg, path = xmconfig.load(args, opts.get("defconfig"), search)
        except ConfigError as e:
            raise XmError(str(e)) from None
    if not quiet and path is not None:
        print(f'Using config file "{path}".')
    if "dryrun" in opts:
        sys.stdout.write(sxp.pretty(cfg.to_sxp()))
        return 0
    values = {"config": sxp.to_string(cfg.to_sxp()), "paused": "paused" in opts, "notes": cfg.notes}
    if opts.get("host"):
        values["host"] = opts["host"]
    res = ctx.call("create", values)
    if not quiet:
        where = f" on host {res['host']}" if res.get("host") else ""
        print(f"Started domain {res['name']} (id={res['domid']}){where}")
    if cfg.builder == "hvm" and (cfg.hvm.get("vncviewer") or cfg.hvm.get("vncconsole")):
        _start_vncviewer(ctx, res["name"])
    if "console_autoconnect" in opts:
        from .console import attach
        attach(ctx.client, res["name"])
    return 0


def cmd_vncviewer(ctx, opts, args):
    info = ctx.client.get(f"/api/domains/{_dom(args[0])}/vnc")
    if "port" not in info:
        raise XmError(f"Domain {info.get('name', args[0])} has no VNC server (set vnc=1 in its config; "
                      "its screen is still in the web console)")
    host = info["host"] if ":" not in info["host"] else f"[{info['host']}]"
    addr = f"{host}:{info['port'] - 5900}"
    if "print" in opts:
        print(addr)
        return 0
    import shutil
    viewer = shutil.which("vncviewer") or shutil.which("xtightvncviewer")
    if viewer is None:
        raise XmError(f"no vncviewer installed; point a VNC viewer at {addr} (port {info['port']})")
    os.execv(viewer, [viewer, addr])


def _start_vncviewer(ctx, dom: str) -> None:
    """vncviewer=1 / vncconsole=1: a viewer on the new domain's display, in
    the background as Xen's xm did; without one installed, say where to look."""
    import shutil
    import subprocess
    try:
        info = ctx.client.get(f"/api/domains/{_dom(dom)}/vnc")
    except XmError as e:
        print(f"vncviewer: {e}", file=sys.stderr)
        return
    if "port" not in info:
        print(f"vncviewer: domain {dom} has no VNC server (vnc=1)", file=sys.stderr)
        return
    addr = f"{info['host']}:{info['port'] - 5900}"
    viewer = shutil.which("vncviewer") or shutil.which("xtightvncviewer")
    if viewer is None or not os.environ.get("DISPLAY"):
        print(f"vncviewer: no viewer to start here; the display is {addr} (port {info['port']})",
              file=sys.stderr)
        return
    subprocess.Popen([viewer, addr], stdin=subprocess.DEVNULL, start_new_session=True)
