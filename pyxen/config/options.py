"""The xm domain-config variables: names, types, defaults and help.

This table (Xen 3.4's ``xm create`` variables, plus xl's common ones) is the
single source of truth for ``xm create --help_config``, for the defaults
``DomainConfig`` gives a variable that is not set, for converting
``var=value`` given on the command line, and for deciding which variables a
config file may set.  ``applies`` says whether the variable has an effect on
QEMU; those that do not are accepted and reported in the log, never dropped
silently and never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Var:
    name: str
    kind: str            # int | str | bool | list | intorstr
    default: object
    help: str
    applies: bool = True
    xl: bool = False     # xl.cfg name (not in xm)


_ = Var
VARS: tuple[Var, ...] = (
    # core
    _("name", "str", None, "Domain name; defaults to the config file's basename."),
    _("uuid", "str", None, "Domain UUID; random when not given."),
    _("builder", "str", "linux", "Domain builder: 'linux' (paravirtual: direct kernel boot) or 'hvm'."),
    _("type", "str", None, "xl: guest type pv | pvh | hvm (maps to builder).", xl=True),
    _("kernel", "str", None, "Kernel image to boot (required for the linux builder); for HVM the firmware "
      "loader: Xen's hvmloader (or any loader) means SeaBIOS, an OVMF image means UEFI."),
    _("ramdisk", "str", "", "Initial ramdisk image."),
    _("loader", "str", "", "HVM firmware loader (use kernel, bios or firmware).", applies=False),
    _("bios", "str", None, "xl: HVM firmware: seabios (default) or ovmf (UEFI).", xl=True),
    _("firmware", "str", None, "HVM firmware: seabios (default) or ovmf (UEFI); same as xl's bios.", xl=True),
    _("features", "str", "", "Xen guest features (no meaning on QEMU).", applies=False),
    _("memory", "int", 128, "Domain memory in MiB."),
    _("maxmem", "int", None, "Maximum domain memory in MiB (balloon ceiling)."),
    _("shadow_memory", "int", 0, "Xen shadow memory (no meaning on QEMU).", applies=False),
    _("vcpus", "int", 1, "Number of virtual CPUs."),
    _("maxvcpus", "int", None, "xl: maximum vCPUs; those above 'vcpus' start offline.", xl=True),
    _("vcpu_avail", "int", None, "Bitmask of vCPUs online at boot."),
    _("cpu", "int", None, "CPU to run vCPU0 on."),
    _("cpus", "intorstr", None, "CPUs the vCPUs may run on, e.g. '0-3,5,^1', or one entry per vCPU."),
    _("cpu_weight", "int", 256, "Credit scheduler weight."),
    _("cpu_cap", "int", 0, "Credit scheduler cap in % of one CPU (0 = none)."),
    _("cap", "int", None, "xl: same as cpu_cap.", xl=True),
    _("on_poweroff", "str", "destroy", "Action when the guest powers off: destroy | restart | preserve | rename-restart."),
    _("on_reboot", "str", "restart", "Action when the guest reboots."),
    _("on_crash", "str", "restart", "Action when the guest crashes (also coredump-destroy | coredump-restart)."),
    _("on_watchdog", "str", "destroy", "xl: action when the guest watchdog fires.", xl=True),
    _("on_host_failure", "str", "preserve", "In a cluster, when the domain's host fails (its lease is gone and "
      "the grace delay has passed): restart (one surviving host starts it from its config) | preserve "
      "(leave it for its host to come back)."),
    _("restart", "str", None, "Deprecated: onreboot | always | never (sets the on_* actions)."),
    _("on_xend_start", "str", "ignore", "Managed domains: ignore | start.", applies=False),
    _("on_xend_stop", "str", "ignore", "Managed domains: ignore | shutdown | suspend.", applies=False),
    _("bootloader", "str", None, "Bootloader (pygrub) run to find the kernel.", applies=False),
    _("bootargs", "str", None, "Arguments for the bootloader.", applies=False),
    _("bootentry", "str", None, "Deprecated bootloader entry.", applies=False),
    _("root", "str", "", "root= for the kernel command line, e.g. '/dev/sda1 ro'."),
    _("extra", "str", "", "Extra kernel command line arguments."),
    _("cmdline", "str", None, "xl: the whole kernel command line (root and extra are then ignored).", xl=True),
    _("ip", "str", "", "Kernel IP autoconfiguration: the guest's address."),
    _("gateway", "str", "", "Kernel IP autoconfiguration: gateway."),
    _("netmask", "str", "", "Kernel IP autoconfiguration: netmask."),
    _("hostname", "str", "", "Kernel IP autoconfiguration: host name."),
    _("interface", "str", "eth0", "Kernel IP autoconfiguration: interface."),
    _("dhcp", "str", "off", "Kernel IP autoconfiguration: 'dhcp' or 'off'."),
    _("nfs_server", "str", None, "NFS server for an NFS root."),
    _("nfs_root", "str", None, "NFS root path."),
    _("console", "int", None, "TCP port the console is exported on (default 9600+domid, when enabled in xend-config.sxp)."),
    _("description", "str", "", "Free text description."),
    # devices
    _("disk", "list", [], "Disks: 'type:target,vdev,mode'."),
    _("vif", "list", [], "Network interfaces: 'key=value,...'."),
    _("nics", "int", -1, "Deprecated: number of network interfaces."),
    _("pci", "list", [], "PCI devices to pass through: '[DDDD:]BB:SS.F'."),
    _("vtpm", "list", [], "vTPM: 'instance=N,backend=0' (or xl's 'backend=0,uuid=U'): a TPM 2.0 backed by swtpm."),
    _("ioports", "list", [], "I/O port ranges to pass through.", applies=False),
    _("irq", "list", [], "IRQs to pass through.", applies=False),
    _("vscsi", "list", [], "SCSI devices to pass through.", applies=False),
    _("vfb", "list", [], "Virtual frame buffers: 'vnc=1,...' (HVM: its vnc*/sdl keys set the display)."),
    _("access_control", "list", [], "ACM labels.", applies=False),
    _("usb", "intorstr", None, "HVM: 1 = a USB (UHCI) controller."),
    _("usbdevice", "str", None, "HVM USB device: tablet (absolute pointer, best with VNC) or mouse."),
    _("blkif", "str", "no", "Make the domain a block backend.", applies=False),
    _("netif", "str", "no", "Make the domain a network backend.", applies=False),
    _("tpmif", "str", "no", "Make the domain a TPM backend.", applies=False),
    # HVM
    _("device_model", "str", None, "Path of the device model (QEMU is used; accepted, ignored with a log line)."),
    _("boot", "str", "c", "HVM boot order: a (floppy) c (disk) d (cdrom) n (network), e.g. 'dc'."),
    _("cdrom", "str", None, "HVM CD-ROM (hdc): an ISO file or a host device such as /dev/cdrom."),
    _("fda", "str", "", "HVM floppy A image."),
    _("fdb", "str", "", "HVM floppy B image."),
    _("serial", "str", "", "HVM serial port: 'pty' (it is the domain's console, xm console) or 'none'."),
    _("monitor", "int", 0, "HVM: the device-model monitor (always reachable with xm qemu-monitor).",
      applies=False),
    _("localtime", "int", 0, "HVM: RTC in local time."),
    _("rtc_timeoffset", "int", 0, "HVM: RTC offset in seconds."),
    _("stdvga", "int", 0, "HVM: standard VGA instead of Cirrus."),
    _("isa", "int", 0, "HVM: ISA-only machine.", applies=False),
    _("nographic", "int", 0, "HVM: no graphics card, no VNC or SDL (the serial console only)."),
    _("soundhw", "str", "", "HVM sound cards: sb16, es1370, ac97, hda, pcspk (comma list) or all; "
      "they play to no host device."),
    _("audio", "int", 0, "HVM: Xen 3.0's audio = 1 (the manual's enable-audio): an SB16 card, as "
      "soundhw = 'sb16'."),
    _("keymap", "str", None, "VNC keyboard layout, e.g. en-us, de (default: xend-config's keymap)."),
    _("guest_os_type", "str", "default", "Guest OS type.", applies=False),
    _("vnc", "int", None, "HVM: 1 = a VNC server on port 5900+display (xm vncviewer --print DOM)."),
    _("vncdisplay", "int", None, "HVM: VNC display number (default: the domain id); implies vnc=1."),
    _("vnclisten", "str", None, "HVM: VNC listen address (default: xend-config's vnc-listen)."),
    _("vncunused", "int", 1, "HVM: take the first free display from vncdisplay up (0: that display or fail)."),
    _("vncpasswd", "str", None, "HVM: VNC password, at most 8 characters (default: xend-config's vncpasswd)."),
    _("vncconsole", "int", 0, "HVM: xm create starts a VNC viewer on the display (when one is installed)."),
    _("vncviewer", "int", 0, "Deprecated: same as vncconsole."),
    _("sdl", "int", None, "HVM: an SDL window on the X display ($DISPLAY of xend, or display=)."),
    _("opengl", "int", None, "HVM: OpenGL for SDL.", applies=False),
    _("display", "str", None, "X display for SDL."),
    _("xauthority", "str", None, "X authority file for SDL."),
    _("videoram", "int", None, "HVM video RAM in MiB (cirrus: 4, 8, 16; stdvga: a power of 2)."),
    _("pae", "int", 1, "HVM: PAE in the virtual CPU (0 hides it; 64-bit guests need it)."),
    _("acpi", "int", 1, "HVM: ACPI tables (needed for xm shutdown's power button)."),
    _("apic", "int", 1, "HVM: local APIC in the virtual CPU (0 hides it; single vCPU only)."),
    _("hpet", "int", 0, "HVM: HPET."),
    _("timer_mode", "int", 1, "HVM timer mode.", applies=False),
    _("vpt_align", "int", 1, "HVM timer alignment.", applies=False),
    _("viridian", "int", 0, "HVM: Hyper-V enlightenments (KVM only; ignored under TCG)."),
    _("hap", "int", 1, "Hardware-assisted paging.", applies=False),
    _("xen_platform_pci", "int", 1, "Xen platform PCI device.", applies=False),
    _("pci_msitranslate", "int", 1, "PCI MSI translation.", applies=False),
    _("pci_power_mgmt", "int", 0, "PCI power management.", applies=False),
    _("cpuid", "list", [], "CPUID overrides.", applies=False),
    _("cpuid_check", "list", [], "CPUID checks.", applies=False),
    _("ne2000", "int", 0, "3.0 HVM: the emulated NICs are NE2000 (ne2k_pci) unless a vif names a model."),
    _("lapic", "int", 0, "3.0 HVM: local APIC.", applies=False),
    # rarely used
    _("vhpt", "int", 0, "IA64 VHPT size.", applies=False),
    _("target", "int", 0, "Device-model target domain.", applies=False),
    _("s3_integrity", "int", 1, "S3 integrity.", applies=False),
    _("machine_address_size", "int", None, "Machine address size.", applies=False),
    _("suppress_spurious_page_faults", "int", None, "Suppress spurious page faults.", applies=False),
    _("superpages", "int", 0, "Superpages.", applies=False),
    _("ssidref", "int", 0, "3.0 ACM ssidref.", applies=False),
)
del _

BY_NAME: dict[str, Var] = {v.name: v for v in VARS}


def default(name: str):
    """A variable's default: the one place it is written (DomainConfig's
    field defaults and from_values read it from here)."""
    v = BY_NAME[name].default
    return list(v) if isinstance(v, list) else v

ACTIONS = ("destroy", "restart", "preserve", "rename-restart")
CRASH_ACTIONS = ACTIONS + ("coredump-destroy", "coredump-restart")
HOST_FAILURE_ACTIONS = ("restart", "preserve")


def help_text() -> str:
    """`xm create --help_config`: every variable with its type and default."""
    lines = []
    for v in VARS:
        if v.kind == "list":
            kind = "LIST (repeatable)"
        elif v.kind == "intorstr":
            kind = "VALUE"
        else:
            kind = v.kind.upper()
        default = "" if v.default in (None, "", []) else f" (default {v.default!r})"
        lines.append(f"{v.name}={kind}{default}")
        lines.append(f"\t{v.help}" + ("" if v.applies else " [accepted; no effect on QEMU]"))
    return "\n".join(lines) + "\n"
