"""xm's command table: every subcommand, one entry each.

An entry gives the synopsis, help and options that ``xm help``, ``xm <cmd>
--help``, option parsing, the xm(1) man page and bash completion are made
from, and the operation of ``pyxen.ops.table`` it drives.  A command that
only passes its words on to that operation says how (``send``) and has no
code of its own: ``pyxen.xm.commands`` generates it.  One that does more
names its function (``run``, resolved when the command runs, so that xm
imports only what the command it runs needs).

``send`` lists the operation's parameters the positional words fill, in
order: ``name`` takes the word as it is, ``name?`` may be left out,
``name:path`` makes a file name absolute (xend runs with cwd /),
``name:mem`` reads a size (MiB, or with a k/m/g suffix), ``name:kv*``
collects the remaining ``key=value`` words into an object, and
``name=value`` fills a parameter with a constant (no word).
"""

from __future__ import annotations

from .record import Record


class Opt(Record):
    short: str | None       # 'l' (no dash)
    long: str               # 'long'
    help: str
    arg: str | None = None  # metavar when it takes a value
    param: str | None = None   # the operation parameter it sets (a flag sets True)


class Command(Record):
    name: str
    args: str               # the synopsis after 'xm <name>'
    help: str
    opts: tuple[Opt, ...] = ()
    op: str | None = None   # the operation (pyxen.ops.table) it drives
    send: tuple[str, ...] = ()
    run: str | None = None  # "pyxen.xm.cmd_domains:cmd_list"
    common: bool = False    # listed in the short `xm help`
    min_args: int | None = None    # None: from send
    max_args: int | None = -1      # -1: from send; None: no limit

    @property
    def words(self) -> list[tuple[str, str, bool]]:
        """The positional words of ``send``: (parameter, conversion, optional)."""
        out = []
        for s in self.send:
            name, _, conv = s.partition(":")
            if "=" not in name:
                out.append((name.rstrip("?"), conv, name.endswith("?") or conv.endswith("*")))
        return out

    @property
    def fixed(self) -> dict[str, str]:
        """The constants of ``send`` (``name=value``)."""
        return dict(s.split("=", 1) for s in self.send if "=" in s.partition(":")[0])

    @property
    def arg_range(self) -> tuple[int, int | None]:
        words = self.words
        lo = sum(1 for _, _, opt in words if not opt) if self.min_args is None else self.min_args
        most = None if any(c.endswith("*") for _, c, _ in words) else len(words)
        return lo, (most if self.max_args == -1 else self.max_args)


O = Opt
_DOM = "pyxen.xm.cmd_domains:"
_HOST = "pyxen.xm.cmd_host:"
_SCHED = "pyxen.xm.cmd_sched:"
_DEV = "pyxen.xm.cmd_devices:"
_LONG_SXP = O("l", "long", "List the devices in SXP.")


def _wait_opts(*extra):
    return (O("w", "wait", "Wait for the domain to shut down."), O("a", "all", "Shut down all domains.")) + extra


COMMANDS: tuple[Command, ...] = (
    Command("create", "<ConfigFile> [options] [vars]", "Create a domain based on <ConfigFile>.", (
        O("h", "help", "Print this help."),
        O(None, "help_config", "Print the available configuration variables for the config file."),
        O("q", "quiet", "Quiet."),
        O(None, "path", "Search path for configuration scripts (default .:<root>/etc/xen).", "PATH"),
        O("f", "defconfig", "Use the given Python configuration script.", "FILE"),
        O("F", "config", "Domain configuration to use (SXP).", "FILE"),
        O("n", "dryrun", "Dry run - prints the resulting configuration in SXP but does not create the domain."),
        O("p", "paused", "Leave the domain paused after it is created."),
        O("c", "console_autoconnect", "Connect to the console after the domain is created."),
        O(None, "host", "In a cluster: create it on this host (default: the host with the most free memory "
          "that has its bridges, disks and kernel).", "NAME")),
        op="create", run="pyxen.xm.cmd_create:cmd_create", common=True, min_args=0, max_args=None),
    Command("list", "[options] [Domain, ...]", "List information about all/some domains.",
            (O("l", "long", "Output all domain details in SXP."),
             O(None, "cluster", "Every cluster host's domains, with a Host column (not in a cluster: this "
               "host's).")), op="domains", run=_DOM + "cmd_list",
            common=True, min_args=0, max_args=None),
    Command("console", "[-q|--quiet] <Domain>", "Attach to <Domain>'s console (Ctrl-] detaches).",
            (O("q", "quiet", "Do not print an error when the domain does not exist."),), op="console",
            run=_DOM + "cmd_console", common=True, min_args=1, max_args=1),
    Command("shutdown", "<Domain> [-waRH]", "Shut down a domain.",
            _wait_opts(O("H", "halt", "Shut down and halt the domain."),
                       O("R", "reboot", "Shut down and reboot the domain.")),
            op="shutdown", run=_DOM + "cmd_shutdown", common=True, min_args=0, max_args=1),
    Command("reboot", "<Domain> [-wa]", "Reboot a domain.", _wait_opts(), op="shutdown",
            run=_DOM + "cmd_reboot", common=True, min_args=0, max_args=1),
    Command("destroy", "<Domain>", "Terminate a domain immediately.", op="destroy", send=("dom",), common=True),
    Command("pause", "<Domain>", "Pause execution of a domain.", op="pause", send=("dom",), common=True),
    Command("unpause", "<Domain>", "Unpause a paused domain.", op="unpause", send=("dom",), common=True),
    Command("save", "[-c|--checkpoint] <Domain> <File>", "Save a domain state to restore later.",
            (O("c", "checkpoint", "Leave the domain running after saving it.", param="checkpoint"),),
            op="save", send=("dom", "file:path"), common=True),
    Command("restore", "<File> [-p|--paused]", "Restore a domain from a saved state.",
            (O("p", "paused", "Do not unpause the domain after restoring it.", param="paused"),),
            op="restore", send=("file:path",), common=True),
    Command("snapshot-create", "<Domain> <Name> [--disk-only] [--live]",
            "Snapshot a domain's disks and memory at one instant.",
            (O(None, "disk-only", "Disks only, no memory: reverting boots the guest on them.", param="disk_only"),
             O(None, "live", "Copy the memory while the guest runs (it pauses only for the last pass).",
               param="live")),
            op="snapshot-create", send=("dom", "name")),
    Command("snapshot-list", "<Domain>", "List a domain's snapshots (each after its parent).",
            op="snapshots", run=_DOM + "cmd_snapshot_list", min_args=1, max_args=1),
    Command("snapshot-revert", "<Domain> <Name>", "Return a domain to one of its snapshots.",
            op="snapshot-revert", send=("dom", "name")),
    Command("snapshot-delete", "<Domain> <Name>", "Delete a domain's snapshot (its children keep theirs).",
            op="snapshot-delete", send=("dom", "name")),
    Command("migrate", "<Domain> <Host> [-l|--live] [-p|--port N] [-r|--resource MB/s] [--downtime MS] "
            "[--copy-storage [--shared-disk VDEV,...]]",
            "Migrate a domain to another machine (its xend must run the relocation server); in a cluster "
            "<Host> may be a member's name.  To this same host (localhost) the domain moves onto a new "
            "QEMU here, with a new domain id.", (
                O("l", "live", "Use live migration: copy memory while the guest runs, then a short stop."),
                O("p", "port", "Use the given relocation port (default xend-relocation-port, 8002).", "N"),
                O("r", "resource", "Limit the bandwidth the migration uses, in MiB/s.", "MB/s"),
                O(None, "downtime", "The longest pause allowed at the switch-over, in ms (default: start at "
                  "50 ms and allow more while pre-copy does not converge).", "MS"),
                O(None, "copy-storage", "Copy the domain's local disks to the target while it runs "
                  "(disks on storage both hosts see are detected and not copied)."),
                O(None, "shared-disk", "With --copy-storage: these disks (guest devices, comma-separated) are on "
                  "storage both hosts see; never copy them (the target checks the file is there).", "VDEV,...",
                  param="shared_disks"),
                O(None, "progress", "Print progress even when stderr is not a terminal.")),
            op="migrate", run=_DOM + "cmd_migrate", common=True, min_args=2, max_args=2),
    Command("domid", "<DomainName>", "Convert a domain name to domain id.", op="domain",
            run=_DOM + "cmd_domid", min_args=1, max_args=1),
    Command("domname", "<DomId>", "Convert a domain id to domain name.", op="domain",
            run=_DOM + "cmd_domname", min_args=1, max_args=1),
    Command("uptime", "[-s] [Domain, ...]", "Print uptime for a domain.",
            (O("s", "short", "Print one line per domain, like uptime(1)."),), op="domains",
            run=_DOM + "cmd_uptime", min_args=0, max_args=None),
    Command("info", "[-c|--config]", "Get information about Xen host.",
            (O("c", "config", "List xend configuration parameters."),), op="host", run=_HOST + "cmd_info",
            common=True, min_args=0, max_args=0),
    Command("dmesg", "[-c|--clear]", "Read and/or clear Xend's message buffer.",
            (O("c", "clear", "Clear the contents of the message buffer."),), op="dmesg",
            run=_HOST + "cmd_dmesg", min_args=0, max_args=0),
    Command("top", "[-b] [-d SECONDS] [-i N]", "Monitor a host and the domains in real time (xentop).", (
        O("b", "batch", "Batch mode: print plain text to stdout."),
        O("d", "delay", "Seconds between updates.", "SECONDS"),
        O("i", "iterations", "Number of updates before exiting.", "N")), op="domains", run=_HOST + "cmd_top",
        min_args=0, max_args=0),
    Command("events", "[--json] [-n N]", "Follow domain state changes as they happen.",
            (O(None, "json", "One JSON object per line."), O("n", "count", "Exit after N events.", "N")),
            op="events", run=_HOST + "cmd_events", min_args=0, max_args=0),
    Command("host-list", "", "List the cluster's hosts: address, state, free memory, vCPUs, domains, "
            "lease age.", op="hosts", run=_HOST + "cmd_host_list", min_args=0, max_args=0),
    Command("host-evacuate", "<Host>", "Live-migrate every domain of <Host> (this host) to the other hosts "
            "and leave it in maintenance; lists what cannot go and why.", op="host-evacuate",
            run=_HOST + "cmd_host_evacuate", min_args=1, max_args=1),
    Command("host-maintenance", "<Host> on|off", "Put <Host> in maintenance (placement and failover pass it "
            "over; its domains keep running) or end it.", op="host-maintenance",
            run=_HOST + "cmd_host_maintenance", min_args=2, max_args=2),
    Command("log", "", "Print xend log.", op="log", run=_HOST + "cmd_log", min_args=0, max_args=0),
    Command("vcpu-list", "[Domain, ...]", "List the VCPUs for all/some domains.", op="vcpus",
            run=_SCHED + "cmd_vcpu_list", min_args=0, max_args=None),
    Command("vcpu-pin", "<Domain> <VCPU|all> <CPUs|all>", "Set which CPUs a VCPU can use.", op="vcpu-pin",
            send=("dom", "vcpu", "cpus")),
    Command("sched-credit", "[-d <Domain> [-w[=WEIGHT]|-c[=CAP]]]", "Get/set credit scheduler parameters.", (
        O("d", "domain", "Domain to modify.", "DOMAIN"),
        O("w", "weight", "Weight (int).", "WEIGHT"),
        O("c", "cap", "Cap (int, % of one CPU; 0 = no cap).", "CAP")), op="sched-credit",
        run=_SCHED + "cmd_sched_credit", min_args=0, max_args=0),
    Command("vcpu-set", "<Domain> <vCPUs>", "Set the number of active VCPUs for allowed for the domain.",
            op="vcpu-set", send=("dom", "vcpus")),
    Command("mem-set", "<Domain> <Mem>", "Set the current memory usage for a domain.", op="mem-set",
            send=("dom", "memory:mem")),
    Command("mem-max", "<Domain> <Mem>", "Set the maximum amount reservation for a domain.", op="mem-max",
            send=("dom", "memory:mem")),
    Command("sysrq", "<Domain> <letter>", "Send a sysrq to a domain.", op="sysrq", send=("dom", "key")),
    Command("rename", "<Domain> <NewDomainName>", "Rename a domain.", op="rename", send=("dom", "name")),
    Command("dump-core", "[-L|--live] [-C|--crash] [-R|--reset] <Domain> [Filename]",
            "Dump core for a specific domain.", (
                O("L", "live", "Dump core without pausing the domain."),
                O("C", "crash", "Crash domain after dumping core."),
                O("R", "reset", "Reset domain after dumping core.")), op="dump-core",
            run=_DOM + "cmd_dump_core", min_args=1, max_args=2),
    Command("sched-sedf", "[<Domain> [-p ms] [-s ms] [-l ms] [-e 0|1] [-w weight]]",
            "Get/set EDF parameters (enforced as a CPU cap and share; see the README).", (
                O("p", "period", "Relative deadline (ms).", "MS"),
                O("s", "slice", "Worst-case execution time (ms).", "MS"),
                O("l", "latency", "Scaled period (ms) when domain performs heavy I/O.", "MS"),
                O("e", "extra", "Flag (0 or 1) controls if domain can run in extra time.", "FLAG"),
                O("w", "weight", "CPU period weight (int).", "WEIGHT")), op="sched-sedf",
            run=_SCHED + "cmd_sched_sedf", min_args=0, max_args=6),
    Command("sched-bvt", "<Domain> <mcuadv> <warpback> <warpvalue> <warpl> <warpu>",
            "Set Borrowed Virtual Time parameters (3.0): mcuadv maps to the credit weight "
            "(weight = 2560/mcuadv); the warp values do not apply and are ignored.", op="sched-credit",
            run=_SCHED + "cmd_sched_bvt", min_args=6, max_args=6),
    Command("sched-bvt-ctxallow", "<Allow>", "Set the BVT context switch allowance (3.0; accepted, no effect).",
            run=_SCHED + "cmd_sched_bvt_ctxallow", min_args=1, max_args=1),
    Command("block-list", "<Domain> [--long]", "List virtual block devices for a domain.", (_LONG_SXP,),
            op="devices", run=_DEV + "cmd_block_list", min_args=1, max_args=1),
    Command("block-attach", "<Domain> <BackDev> <FrontDev> <Mode> [BackDomain]",
            "Create a new virtual block device.", op="block-attach",
            send=("dom", "uname", "vdev", "mode", "backend?")),
    Command("block-detach", "<Domain> <DevId> [-f|--force]", "Destroy a domain's virtual block device.",
            (O("f", "force", "Drop the device even if the guest does not release it.", param="force"),),
            op="block-detach", send=("dom", "dev")),
    Command("network-attach", "<Domain> [type=<type>] [mac=<mac>] [bridge=<bridge>] [ip=<ip>] "
            "[script=<script>] [backend=<BackDomain>] [vifname=<name>] [rate=<rate>] [model=<model>] "
            "[accel=<accel>] [policy=<policy>] [label=<label>] [be_mac=<mac>]",
            "Create a new virtual network device.", op="device-attach", send=("dom", "cls=vif", "config:kv*")),
    Command("network-detach", "<Domain> <DevId> [-f|--force]", "Destroy a domain's virtual network device.",
            (O("f", "force", "Remove the device's backend even if the guest does not release it.",
               param="force"),), op="device-detach", send=("dom", "cls=vif", "dev")),
    Command("network-list", "<Domain> [--long]", "List virtual network interfaces for a domain.", (_LONG_SXP,),
            op="devices", run=_DEV + "cmd_network_list", min_args=1, max_args=1),
    Command("pci-attach", "[-o k=v] <Domain> <[DDDD:]BB:SS.F> [VSlot]",
            "Insert a new pass-through PCI device (bound to vfio-pci on the host).",
            (O("o", "options", "msitranslate=0|1 or power_mgmt=0|1 (accepted; no meaning with VFIO).", "K=V"),),
            op="pci-attach", run=_DEV + "cmd_pci_attach", min_args=2, max_args=3),
    Command("pci-detach", "<Domain> <[DDDD:]BB:SS.F>", "Remove a domain's pass-through PCI device.",
            op="pci-detach", send=("dom", "dev")),
    Command("pci-list", "<Domain>", "List pass-through PCI devices for a domain.", op="devices",
            run=_DEV + "cmd_pci_list", min_args=1, max_args=1),
    Command("pci-list-assignable-devices", "", "List host PCI devices that can be passed through "
            "(bound to vfio-pci).", op="pci-assignable", run=_DEV + "cmd_pci_list_assignable",
            min_args=0, max_args=0),
    Command("pci-assignable-add", "<[DDDD:]BB:SS.F>", "Make a host PCI device assignable: bind it to vfio-pci "
            "(what pciback.hide did).", op="pci-assignable-add", send=("dev",)),
    Command("pci-assignable-remove", "[-r] <[DDDD:]BB:SS.F>", "Release a host PCI device from vfio-pci.",
            (O("r", "rebind", "Bind it to the driver it had before pci-assignable-add.", param="rebind"),),
            op="pci-assignable-remove", send=("dev",)),
    Command("vtpm-list", "<Domain> [--long]", "List virtual TPM devices for a domain.", (_LONG_SXP,),
            op="devices", run=_DEV + "cmd_vtpm_list", min_args=1, max_args=1),
    Command("vncviewer", "[--print] <Domain>",
            "Show an HVM domain's screen: run vncviewer on its VNC display, or print the address.",
            (O(None, "print", "Print the display as HOST:DISPLAY (port 5900+DISPLAY) instead of "
               "starting a viewer."),), op="vnc", run="pyxen.xm.cmd_create:cmd_vncviewer",
            min_args=1, max_args=1),
    Command("qemu-monitor", "<Domain> [Command]",
            "The device model's monitor (QEMU's, the manual's Ctrl+Alt+2): run one command, "
            "or read commands from the terminal until EOF or 'quit'.", op="qemu-monitor",
            run=_DOM + "cmd_qemu_monitor", min_args=1, max_args=None),
    Command("vnet-list", "[-l|--long] [<VnetId> ...]", "List Vnets.", (O("l", "long", "List Vnets as SXP."),),
            op="vnets", run=_DEV + "cmd_vnet_list", min_args=0, max_args=None),
    Command("vnet-create", "<ConfigFile>", "Create a vnet from ConfigFile.", op="vnet-create",
            run=_DEV + "cmd_vnet_create", min_args=1, max_args=1),
    Command("vnet-delete", "<VnetId>", "Delete a Vnet.", op="vnet-delete", send=("vnet",)),
    Command("help", "[--long] [<Command>]", "Display this message or help for a command.",
            (O(None, "long", "Show the full list of subcommands."),), run="pyxen.xm.commands:cmd_help",
            common=True, min_args=0, max_args=1),
)

BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}

# Xen's deprecated spellings: run the new command after a warning on stderr.
DEPRECATED: dict[str, str] = {
    "balloon": "mem-set", "set-vcpus": "vcpu-set", "vif-list": "network-list",
    "vbd-create": "block-attach", "vbd-destroy": "block-detach", "vbd-list": "block-list",
}
# Spellings the Xen 3.0 manual itself uses for a command: accepted as they are.
MANUAL_SPELLINGS: dict[str, str] = {"vcpus-set": "vcpu-set"}
