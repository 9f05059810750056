"""HVM guests end to end (issue 8): real TCG guests booted by firmware from
the media ``make hvm-images`` builds (an MBR disk with SYSLINUX, an ISO with
ISOLINUX), reached through ``xm console`` on their serial port, their screen
read back with a QMP screendump (through ``xm qemu-monitor``) and OCR, their
VNC server spoken to, saved and restored, shut down through ACPI.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from pyxen.paths import Paths
from pyxen.testing import state
from pyxen.testing.wait import poll

HVMLOADER = "/usr/lib/xen/boot/hvmloader"   # Xen's loader: means SeaBIOS here (need not exist)


def hvm_config(host, name: str, **values) -> Path:
    v = {"name": name, "builder": "hvm", "kernel": HVMLOADER, "memory": 128, "serial": "pty"}
    v.update(values)
    path = host.root / "etc/xen" / name
    path.write_text("".join(f"{k} = {val!r}\n" for k, val in v.items()))
    return path


def private_disk(host, media) -> str:
    """A writable copy of the shared boot disk (an IDE disk cannot be read-only)."""
    disk = host.root / "disk.img"
    shutil.copy(media["disk"], disk)
    return str(disk)


def rfb_hello(host: str, port: int, timeout: float = 10) -> tuple[bytes, bytes]:
    """The server's RFB version line and its list of security types (after we answer 3.8)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        version = s.recv(12)
        s.sendall(b"RFB 003.008\n")
        n = s.recv(1)
        types = s.recv(n[0]) if n and n[0] else b""
        return version, types


def vnc_addr(host, dom: str) -> tuple[str, int]:
    out = host.xm("vncviewer", "--print", dom).stdout.strip()
    h, _, display = out.rpartition(":")
    return h, 5900 + int(display)


def screen_text(host, dom: str, tmp_path: Path) -> str:
    """The guest's screen as text: HMP screendump (a PPM) through xm
    qemu-monitor, made OCR-friendly (dark on light, 3x) and read by tesseract."""
    ppm = tmp_path / f"{dom}.ppm"
    host.xm("qemu-monitor", dom, f"screendump {ppm}")
    data = ppm.read_bytes()
    magic, dims, maxval, pixels = data.split(b"\n", 3)
    assert magic == b"P6" and maxval == b"255"
    w, h = map(int, dims.split())
    gray = bytes(255 - max(pixels[i], pixels[i + 1], pixels[i + 2]) for i in range(0, 3 * w * h, 3))
    assert len(set(gray)) > 1, "the screen is blank"
    scale = 3
    rows = []
    for y in range(h):
        row = bytes(b for b in gray[y * w:(y + 1) * w] for _ in range(scale))
        rows += [row] * scale
    pgm = tmp_path / f"{dom}.pgm"
    pgm.write_bytes(b"P5\n%d %d\n255\n" % (w * scale, h * scale) + b"".join(rows))
    res = subprocess.run(["tesseract", str(pgm), "-", "--psm", "6"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_disk_boot_console_screen_vnc_monitor_save_restore_shutdown(make_host, hvm_media, tmp_path):
    host = make_host()
    cfg = hvm_config(host, "hvm1", disk=[f"file:{private_disk(host, hvm_media)},ioemu:hda,w"],
                     vnc=1, vncunused=1, acpi=1, apic=1, pae=1, boot="c", usb=1, usbdevice="tablet", localtime=1)
    host.xm("create", str(cfg))
    assert host.domains()["hvm1"]["state"] in ("r-----", "-b----")

    # SeaBIOS -> SYSLINUX (MBR, FAT16) -> the default guest; its login is on
    # the serial port, which is the domain's console.
    with host.console("hvm1") as con:
        con.login()
        out, rc = con.run("cat /proc/cmdline; ls /sys/bus/pci/drivers")
        assert rc == 0 and "console=ttyS0" in out
        # The guest writes a line on its VGA text screen.
        con.run("echo PYXEN SCREEN TEXT CHECK > /dev/tty0")

    text = screen_text(host, "hvm1", tmp_path)
    assert "PYXEN SCREEN TEXT CHECK" in " ".join(text.upper().split()), text

    # The device model's monitor, through xend.
    assert "VM status: running" in host.xm("qemu-monitor", "hvm1", "info status").stdout
    assert "hvm1" in host.xm("qemu-monitor", "hvm1", "info", "name").stdout
    res = subprocess.run(["xm", "qemu-monitor", "hvm1"], input="info status\nquit\n", env=host.env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "VM status: running" in res.stdout, res.stderr
    res = host.xm("qemu-monitor", "hvm1", "quit", check=False)
    assert res.returncode != 0 and "xm destroy" in res.stderr
    assert "Tablet" in host.xm("qemu-monitor", "hvm1", "info usb").stdout

    # VNC on 5900 + display, speaking RFB, no password asked.
    h, port = vnc_addr(host, "hvm1")
    assert h == "127.0.0.1" and 5900 <= port < 6000
    version, types = rfb_hello(h, port)
    assert version.startswith(b"RFB 003.") and 1 in types     # 1 = None

    # Pause and unpause.
    host.xm("pause", "hvm1")
    assert host.domains()["hvm1"]["state"] == "--p---"
    assert "paused" in host.xm("qemu-monitor", "hvm1", "info status").stdout
    host.xm("unpause", "hvm1")

    # Save and restore: same machine and firmware, the guest answers on.
    chk = tmp_path / "hvm1.chk"
    host.xm("save", "hvm1", str(chk), timeout=180)
    assert "hvm1" not in host.domains()
    header = chk.read_bytes()[:4096]
    assert b'"firmware":"seabios"' in header and b'"machine":"pc-i440fx-' in header
    host.xm("restore", str(chk), timeout=180)
    with host.console("hvm1") as con:
        con.login()
        out, rc = con.run("echo still-here; cat /proc/uptime")
        assert rc == 0 and "still-here" in out
    h, port = vnc_addr(host, "hvm1")
    assert rfb_hello(h, port)[0].startswith(b"RFB 003.")

    # ACPI power button: the guest powers itself off.
    host.xm("shutdown", "-w", "hvm1", timeout=180)
    assert "hvm1" not in host.domains()


def test_iso_boot_d_with_vnc_password(make_host, hvm_media):
    host = make_host("(accel tcg)\n(vnc-listen 127.0.0.1)\n")
    cfg = hvm_config(host, "hvmcd", cdrom=str(hvm_media["iso"]), boot="dc", vnc=1, vncdisplay=37,
                     vncpasswd="s3cret", stdvga=1, soundhw="ac97", device_model="/usr/lib/xen/bin/qemu-dm",
                     vncviewer=1)
    res = host.xm("create", str(cfg))
    if not (shutil.which("vncviewer") and os.environ.get("DISPLAY")):
        # vncviewer=1 with nothing to start: xm says where the display is.
        assert re.search(r"no viewer to start here; the display is 127\.0\.0\.1:(\d+)", res.stderr), res.stderr
    with host.console("hvmcd") as con:
        con.login()
        out, rc = con.run("cat /proc/cmdline")
        assert rc == 0 and "console=ttyS0" in out
    # The CD-ROM is IDE hdc; VNC asks for the password (type 2 = VNC auth).
    assert "ide1-cd0" in host.xm("qemu-monitor", "hvmcd", "info block").stdout or \
        "vbd-hdc" in host.xm("qemu-monitor", "hvmcd", "info block").stdout
    h, port = vnc_addr(host, "hvmcd")
    assert port >= 5937
    version, types = rfb_hello(h, port)
    assert version.startswith(b"RFB 003.") and 2 in types and 1 not in types
    # A restarted xend adopts the domain and still knows its display.
    host.xend("restart")
    assert vnc_addr(host, "hvmcd") == (h, port)
    assert "VM status: running" in host.xm("qemu-monitor", "hvmcd", "info status").stdout
    log = (host.root / "var/log/xen/xend.log").read_text()
    assert "device_model=/usr/lib/xen/bin/qemu-dm ignored" in log
    # The password was set through QMP (logged at DEBUG, the default level),
    # yet it is in no log, and the logs are not world-readable.
    assert "set_password" in log
    for f in (host.root / "var/log/xen").rglob("*"):
        if f.is_file() and f.suffix in (".log", "") and "console" not in f.parts:
            assert "s3cret" not in f.read_text(errors="replace"), f
    assert (host.root / "var/log/xen/xend.log").stat().st_mode & 0o007 == 0
    host.xm("destroy", "hvmcd")


def test_uefi_boot_ovmf_keeps_nvram(make_host, hvm_media, tmp_path):
    """OVMF on TCG: the firmware finds no boot entry, its shell runs the
    disk's startup.nsh, which starts the same kernel through its EFI stub.
    Saved and restored, it carries on under the same firmware."""
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        pytest.skip("ovmf is not installed (apt-get install ovmf)")
    host = make_host()
    cfg = hvm_config(host, "uefi", firmware="ovmf", memory=256,
                     disk=[f"file:{private_disk(host, hvm_media)},hda,w"])
    host.xm("create", str(cfg))
    with host.console("uefi") as con:
        con.login(timeout=400)
        out, rc = con.run("ls /sys/firmware/efi >/dev/null && echo efi-booted")
        assert "efi-booted" in out
    chk = tmp_path / "uefi.chk"
    host.xm("save", "uefi", str(chk), timeout=180)
    assert b'"firmware":"ovmf"' in chk.read_bytes()[:4096]
    host.xm("restore", str(chk), timeout=180)
    with host.console("uefi") as con:
        con.login()
        out, rc = con.run("ls /sys/firmware/efi >/dev/null && echo still-efi")
        assert "still-efi" in out
    host.xm("destroy", "uefi")
    # The variable store went back into the store, for the next boot.
    [key] = state.keys(host.root, "nvram/")
    assert len(state.get(host.root, key)) == os.path.getsize("/usr/share/OVMF/OVMF_VARS_4M.fd")


def test_hvm_refusals_leave_nothing_behind(make_host, hvm_media):
    host = make_host(start=False)
    host.env.pop("DISPLAY", None)       # xend (and so QEMU) has no X display
    host.xend("start")
    res = host.xm("create", str(hvm_config(host, "nosdl", sdl=1, cdrom=str(hvm_media["iso"]))), check=False)
    assert res.returncode != 0 and "no X display" in res.stderr and "Traceback" not in res.stderr
    res = host.xm("create", str(hvm_config(host, "badboot", boot="cz")), check=False)
    assert res.returncode != 0 and "boot:" in res.stderr and "Traceback" not in res.stderr
    res = host.xm("create", str(hvm_config(host, "nocd", cdrom="/nonexistent.iso")), check=False)
    assert res.returncode != 0 and "/nonexistent.iso does not exist" in res.stderr
    assert set(host.domains()) == {"Domain-0"}
    assert not host.qemu_pids()
    # A PV guest has no VNC server and no screen.
    host.xm("create", "-p", str(host.config("pv")))
    res = host.xm("vncviewer", "--print", "pv", check=False)
    assert res.returncode != 0 and "no VNC display" in res.stderr
    poll(lambda: "pv" in host.domains(), 10, what="pv listed")


VENCRYPT, X509NONE, X509VNC = 19, 260, 261


def vencrypt_tls(port: int, ca: Path, client: Path | None = None) -> tuple[bytes, list[int], int]:
    """RFB 3.8 up to VeNCrypt's x509 sub-type, then TLS with the pool CA:
    (the security types offered, the sub-types, the SecurityResult read
    over TLS).  A refused client certificate raises OSError (ssl.SSLError
    or ConnectionError: TLS 1.3 refuses it after the handshake)."""
    import ssl
    import struct
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        assert s.recv(12) == b"RFB 003.008\n"
        s.sendall(b"RFB 003.008\n")
        n = s.recv(1)[0]
        types = s.recv(n)
        s.sendall(bytes([VENCRYPT]))
        assert s.recv(2) == b"\x00\x02"                 # VeNCrypt 0.2
        s.sendall(b"\x00\x02")
        assert s.recv(1) == b"\x00"                     # version accepted
        k = s.recv(1)[0]
        subs = list(struct.unpack(f">{k}I", s.recv(4 * k)))
        pick = next(t for t in subs if t in (X509NONE, X509VNC))
        s.sendall(struct.pack(">I", pick))
        assert s.recv(1) == b"\x01"                     # sub-type accepted: TLS follows
        ctx = ssl.create_default_context(cafile=str(ca))
        if client is not None:
            ctx.load_cert_chain(str(client / "client-cert.pem"), str(client / "client-key.pem"))
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            # x509none: the SecurityResult comes over TLS at once (x509vnc:
            # the VNC challenge, 16 bytes).
            got = t.recv(16 if pick == X509VNC else 4)
            if len(got) < 4:
                raise ConnectionError(f"the server closed the TLS session ({got!r})")
            return types, subs, len(got) if pick == X509VNC else struct.unpack(">I", got)[0]


def test_vnc_over_tls_with_the_pool_ca(make_host, hvm_media):
    """(vnc-tls yes): the VNC display offers only VeNCrypt, and a TLS
    handshake checked against the pool CA succeeds (xend/vnctls.py); with
    (vnc-x509-verify yes) only a client holding a certificate of that CA
    gets through.  QEMU runs unprivileged here (qemu-uid-base): the
    domain's private copy of the credentials is what it reads."""
    base = 400000 + (os.getpid() % 500) * 100     # uids no other test's QEMU uses
    host = make_host(f"(accel tcg)\n(vnc-tls yes)\n(vnc-x509-verify yes)\n(qemu-uid-base {base})\n", start=False)
    res = host.xend("start", check=False)
    assert res.returncode != 0 and "(vnc-tls yes)" in res.stderr and "pyxen cert" in res.stderr, res.stderr
    host.run("pyxen", "ca", check=True)
    host.run("pyxen", "cert", "localhost", "--ip", "127.0.0.1", check=True)
    alice = host.root / "alice"
    host.run("pyxen", "cert", "alice", "--client", "--out", str(alice), check=True)
    host.xend("start")
    host.xm("create", "-p", str(hvm_config(host, "tls1", cdrom=str(hvm_media["iso"]), boot="d", vnc=1,
                                           vncdisplay=41, vncunused=0)))
    _, port = vnc_addr(host, "tls1")
    ca = host.root / "etc/xen/pki/ca-cert.pem"
    types, subs, result = vencrypt_tls(port, ca, alice)
    assert types == bytes([VENCRYPT]) and X509NONE in subs and result == 0
    with pytest.raises(OSError):                    # no client certificate: refused
        vencrypt_tls(port, ca)
    domid = host.domains()["tls1"]["id"]
    creds = Paths(host.root).domain_run(domid) / "vnc-x509"
    st = (creds / "server-key.pem").stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == base + domid
    host.xm("destroy", "tls1")
    assert not creds.exists()
