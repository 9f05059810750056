"""xm's device listings (block, network, PCI, vTPM), PCI hot-plug with its
options, and the vnet commands that read files or print tables."""

from __future__ import annotations

import sys
from urllib.parse import quote

from ..config import sxp
from . import format as fmt
from .client import XmError
from .commands import dom_path as _dom

def _device_list(ctx, opts, dom: str, cls: str, long_fmt, header: str, row) -> int:
    """xm block-list / network-list: SXP with -l, else Xen's table, whose
    header Xen printed only above at least one device."""
    devs = ctx.client.get(f"/api/domains/{_dom(dom)}/devices/{cls}")["devices"]
    if "long" in opts:
        sys.stdout.write("".join(long_fmt(d) for d in devs))
    else:
        for i, d in enumerate(devs):
            if i == 0:
                print(header)
            print(row(d))
    return 0


def cmd_block_list(ctx, opts, args):
    return _device_list(ctx, opts, args[0], "vbd", fmt.block_long, fmt.BLOCK_HEADER, fmt.block_row)


def cmd_network_list(ctx, opts, args):
    return _device_list(ctx, opts, args[0], "vif", fmt.network_long, fmt.NETWORK_HEADER, fmt.network_row)


def cmd_pci_attach(ctx, opts, args):
    if "options" in opts:
        k, sep, v = opts["options"].partition("=")
        if not sep or k not in ("msitranslate", "power_mgmt") or v not in ("0", "1"):
            raise XmError(f"Invalid pci attach option: {opts['options']}")
    ctx.call("pci-attach", {"dom": args[0], "dev": args[1], "vslot": args[2] if len(args) > 2 else None})
    return 0


def cmd_pci_list(ctx, opts, args):
    sys.stdout.write(fmt.pci_list(ctx.client.get(f"/api/domains/{_dom(args[0])}/devices/pci")["devices"]))
    return 0


def cmd_pci_list_assignable(ctx, opts, args):
    for bdf in ctx.client.get("/api/pci/assignable")["devices"]:
        print(bdf)
    return 0


def cmd_vtpm_list(ctx, opts, args):
    devs = ctx.client.get(f"/api/domains/{_dom(args[0])}/devices/vtpm")["devices"]
    if "long" in opts:
        sys.stdout.write("".join(fmt.vtpm_long(d) for d in devs))
        return 0
    for i, d in enumerate(devs):
        if i == 0:
            print(fmt.VTPM_HEADER)
        print(fmt.vtpm_row(d))
    return 0


def cmd_vnet_list(ctx, opts, args):
    if args:
        # Naming vnets implies the long form, as in Xen.
        for a in args:
            sys.stdout.write(sxp.pretty(ctx.client.get(f"/api/vnets/{quote(a, safe='')}")["sxp"]))
        return 0
    # Xen printed each vnet's SXP, with or without -l (-l is accepted).
    for v in ctx.client.get("/api/vnets")["vnets"]:
        sys.stdout.write(sxp.pretty(v["sxp"]))
    return 0


def cmd_vnet_create(ctx, opts, args):
    fn = args[0]
    try:
        with open(fn) as f:
            text = f.read()
    except FileNotFoundError:
        raise XmError(f"File not found: {fn}") from None
    except OSError as e:
        raise XmError(f"Unable to read vnet config file {fn}: {e.strerror}") from None
    from ..net.vnet import VnetConfig, VnetError
    try:
        VnetConfig.parse(text, fn)          # a clear error naming the file, before xend
    except VnetError as e:
        raise XmError(str(e)) from None
    ctx.call("vnet-create", {"config": text})
    return 0
