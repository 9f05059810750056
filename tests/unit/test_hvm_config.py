"""HVM config keys (Appendix A.2): parsing, refusals, the SXP round trip,
the QEMU arguments they become, and the boot media's MBR."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pyxen.config import hvmopts as hvmcfg
from pyxen.config.domain import DomainConfig
from pyxen.config.errors import ConfigError
from pyxen.config.options import BY_NAME, help_text
from pyxen.hypervisor.qemu import argv as qargv
from pyxen.hypervisor.qemu import hvmargv as qhvm
from pyxen.image import hvm as media


def cfg(**v) -> DomainConfig:
    base = {"name": "h", "builder": "hvm", "kernel": "/usr/lib/xen/boot/hvmloader"}
    base.update(v)
    return DomainConfig.from_values(base)


def argv(c: DomainConfig, nics=(), **facts) -> list[str]:
    rt = qargv.Runtime(domid=4, run_dir=Path("/run/x/4"), console_log=Path("/var/log/xen/console/guest-h.log"),
                       accel="tcg", nics=list(nics), hvm=qhvm.HvmFacts(**facts))
    return qargv.build(c, rt)


def devices(a: list[str]) -> list[str]:
    return [a[i + 1] for i, x in enumerate(a) if x == "-device"]


def test_builder_and_type_and_firmware():
    assert cfg().builder == "hvm" and cfg().hvm["firmware"] == "seabios"
    assert DomainConfig.from_values({"name": "h", "type": "hvm"}).builder == "hvm"
    assert cfg(builder="vmx").builder == "hvm"
    assert cfg(bios="ovmf").hvm["firmware"] == "ovmf"
    assert cfg(firmware="uefi").hvm["firmware"] == "ovmf"
    assert cfg(kernel="/usr/share/OVMF/OVMF_CODE_4M.fd").hvm["firmware"] == "ovmf"
    assert cfg(kernel="/usr/lib/xen/boot/rombios.bin").hvm["firmware"] == "seabios"
    with pytest.raises(ConfigError, match="bios: expected seabios or ovmf"):
        cfg(bios="coreboot")
    # HVM needs no kernel; PV still does.
    assert DomainConfig.from_values({"name": "h", "builder": "hvm"}).kernel == ""


@pytest.mark.parametrize("key,value,msg", [
    ("boot", "cz", "boot:"), ("boot", "cc", "boot:"),
    ("soundhw", "gus", "soundhw: unknown sound device 'gus'"),
    ("usbdevice", "disk:/x", "usbdevice: expected tablet or mouse"),
    ("serial", "/dev/ttyS0", "serial: expected 'pty'"),
    ("videoram", 3, "videoram: 3 MiB is not possible for cirrus"),
    ("vncpasswd", "123456789", "vncpasswd: VNC passwords are at most 8"),
    ("vncdisplay", 100, "vncdisplay: expected 0-99"),
    ("acpi", "yes", "acpi: expected an integer"),
])
def test_bad_values_name_the_key(key, value, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
        cfg(**{key: value})


def test_cdrom_conflicts_and_ide_only_cdroms():
    with pytest.raises(ConfigError, match="cdrom: hdc"):
        cfg(cdrom="/x.iso", disk=["file:/a.img,hdc,w"])
    with pytest.raises(ConfigError, match="must be one of hda-hdd"):
        cfg(disk=["file:/x.iso,xvdc:cdrom,r"])


def test_sxp_round_trip_keeps_every_hvm_key():
    c = cfg(boot="dc", cdrom="/x.iso", vnc=1, vncdisplay=3, vnclisten="0.0.0.0", vncpasswd="pw",
            sdl=0, stdvga=1, videoram=16, usb=1, usbdevice="tablet", soundhw="ac97,hda", localtime=1,
            acpi=1, apic=0, pae=1, serial="pty", nographic=0, device_model="/usr/lib/xen/bin/qemu-dm",
            firmware="ovmf", ne2000=1, vif=["type=ioemu"])
    back = DomainConfig.from_sxp(c.to_sxp())
    assert back == c
    assert back.hvm["firmware"] == "ovmf" and back.hvm["apic"] == 0 and back.hvm["videoram"] == 16
    assert back.vifs == [{"type": "ioemu", "model": "ne2k_pci"}]


def test_vfb_gives_an_hvm_domain_its_display():
    c = cfg(vfb=["type=vnc, vncdisplay=4, vnclisten=0.0.0.0, vncpasswd=pw"])
    assert (c.hvm["vnc"], c.hvm["vncdisplay"], c.hvm["vnclisten"], c.hvm["vncpasswd"]) == (1, 4, "0.0.0.0", "pw")
    assert cfg(vnc=0, vfb=["vnc=1"]).hvm["vnc"] == 0       # the explicit key wins
    assert DomainConfig.from_sxp(c.to_sxp()).hvm == c.hvm
    with pytest.raises(ConfigError, match="vfb: bad entry 'colour=1'"):
        cfg(vfb=["colour=1"])
    with pytest.raises(ConfigError, match="vfb: vncdisplay expects a number"):
        cfg(vfb=["vncdisplay=x"])


def test_restore_must_match_the_firmware():
    from pyxen.xend import firmware as xhvm
    from pyxen.xend.errors import InvalidRequest
    xhvm.check_restore(cfg(), {"firmware": "seabios"}, "/f")
    xhvm.check_restore(cfg(), {}, "/f")           # a file from before HVM meta existed
    with pytest.raises(InvalidRequest, match="saved with ovmf firmware, the config asks for seabios"):
        xhvm.check_restore(cfg(), {"firmware": "ovmf", "ovmf_code_size": 1}, "/f")
    if qhvm.OVMF_CODE.exists():
        with pytest.raises(InvalidRequest, match="-byte OVMF image"):
            xhvm.check_restore(cfg(firmware="ovmf"), {"firmware": "ovmf", "ovmf_code_size": 1}, "/f")


def test_options_table_documents_hvm_keys():
    for k in ("acpi", "apic", "pae", "boot", "cdrom", "vnc", "vncdisplay", "vncunused", "vnclisten",
              "vncpasswd", "sdl", "serial", "localtime", "stdvga", "usb", "usbdevice", "nographic",
              "soundhw", "ne2000", "device_model", "bios", "firmware"):
        assert k in BY_NAME and BY_NAME[k].help
    assert "firmware=STR" in help_text() and "[accepted; no effect on QEMU]" in help_text()


def test_ide_disks_cdrom_and_boot_order():
    c = cfg(disk=["file:/d.img,ioemu:hda,w", "file:/e.img,xvdb,w"], cdrom="/x.iso", boot="dc")
    a = argv(c)
    devs = devices(a)
    assert "ide-hd,bus=ide.0,unit=0,id=vbd-hda,drive=d-hda,bootindex=2" in devs
    assert "ide-cd,bus=ide.1,unit=0,id=vbd-hdc,drive=d-hdc,bootindex=1" in devs
    assert "virtio-blk-pci,drive=d-xvdb,serial=xvdb,id=vbd-xvdb" in devs
    assert any('"filename": "/x.iso"' in x and '"read-only": true' in x for x in a)
    # An empty CD-ROM drive (no medium) is still a device.
    assert "ide-cd,bus=ide.0,unit=1,id=vbd-hdb" in devices(argv(cfg(disk=[",hdb:cdrom,r"])))
    # No kernel on the command line: the firmware boots.
    assert "-kernel" not in a and "-append" not in a


def test_machine_cpu_display_usb_sound_rtc():
    a = argv(cfg(acpi=0, apic=0, pae=0, vnc=1, usbdevice="tablet", soundhw="all", localtime=1, stdvga=1,
                 videoram=16), vnc_display=5, vnc_password=True, keymap="de")
    s = " ".join(a)
    assert "-machine pc,acpi=off,hpet=off" in s
    assert "-cpu qemu64,-pae,-apic" in s
    devs = devices(a)
    assert "VGA,vgamem_mb=16" in devs and "piix3-usb-uhci,id=usb" in devs and "usb-tablet,bus=usb.0" in devs
    assert {"AC97,audiodev=snd0", "ES1370,audiodev=snd0", "sb16,audiodev=snd0",
            "hda-duplex,bus=hda0.0,audiodev=snd0"} <= set(devs)
    assert "-vnc unix:/run/x/4/vnc.sock,id=web" in s
    assert "-vnc 127.0.0.1:5,id=vnc0,to=99,password=on" in s and "-k de" in s
    assert "-rtc base=localtime" in s and "-display none" in s


def test_nographic_sdl_and_vnc_choices():
    s = " ".join(argv(cfg(nographic=1, vnc=1)))
    assert "-vnc" not in s and "cirrus-vga" not in s and "VGA" not in s
    assert "cirrus-vga" in devices(argv(cfg()))
    assert "-display sdl" in " ".join(argv(cfg(sdl=1), sdl=True))
    s = " ".join(argv(cfg(vncdisplay=7, vncunused=0), vnc_display=7, vnc_unused=False, vnc_listen="::1"))
    assert "-vnc [::1]:7,id=vnc0" in s and "to=99" not in s
    assert hvmcfg.vnc_wanted(cfg(vncdisplay=0).hvm) and not hvmcfg.vnc_wanted(cfg().hvm)


def test_ovmf_pflash_and_nics():
    c = cfg(firmware="ovmf", boot="n", vif=["type=ioemu,mac=00:16:3e:00:00:01",
                                           "mac=00:16:3e:00:00:02"])
    a = argv(c, nics=[(0, "vif4.0", None), (1, "vif4.1", None)], nvram=Path("/run/x/4/ovmf-vars.fd"))
    s = " ".join(a)
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={qhvm.OVMF_CODE}" in s
    assert "if=pflash,format=raw,unit=1,file=/run/x/4/ovmf-vars.fd" in s
    devs = devices(a)
    # type=ioemu: an emulated rtl8139; the other a PV (virtio) NIC; boot='n'
    # gives them their boot ROMs and boot indexes.
    assert "rtl8139,netdev=vif0,mac=00:16:3e:00:00:01,id=nic0,bootindex=1" in devs
    assert "virtio-net-pci,netdev=vif1,mac=00:16:3e:00:00:02,id=nic1,bootindex=2" in devs
    pv = argv(cfg(vif=["mac=00:16:3e:00:00:03,model=e1000"]), nics=[(0, "vif4.0", None)])
    assert "e1000,netdev=vif0,mac=00:16:3e:00:00:03,id=nic0,romfile=" in devices(pv)


def test_pv_command_line_unchanged_by_hvm_code():
    pv = DomainConfig.from_values({"name": "p", "kernel": "/k"})
    a = argv(pv)
    assert "-kernel" in a and "-vnc" not in a and "ide-hd" not in " ".join(a)
    assert a[a.index("-machine") + 1] == "pc"


def test_mbr_layout():
    code = b"\xfa" * 440
    m = media.mbr(code, 2048, 63488)
    assert len(m) == 512 and m[:440] == code and m[510:] == b"\x55\xaa"
    status, _, ptype, _, start, size = struct.unpack("<B3sB3sII", m[446:462])
    assert (status, ptype, start, size) == (0x80, 0x0E, 2048, 63488)
    assert m[462:510] == b"\0" * 48
    assert "console=ttyS0" in media.syslinux_cfg() and "console=tty0" in media.syslinux_cfg()
    assert media.startup_nsh().startswith("\\vmlinuz initrd=\\initrd.img ")


def test_vnc_tls_object_and_option():
    """vnc-tls: the network display gets x509 credentials; xend's own Unix display stays plain."""
    s = " ".join(argv(cfg(vnc=1), vnc_tls_dir=Path("/run/x/4/vnc-x509"), vnc_tls_verify=True))
    assert "-object tls-creds-x509,id=vnctls0,dir=/run/x/4/vnc-x509,endpoint=server,verify-peer=on" in s
    assert "-vnc 127.0.0.1:0,id=vnc0,to=99,tls-creds=vnctls0" in s
    assert "-vnc unix:/run/x/4/vnc.sock,id=web " in s + " "
    plain = " ".join(argv(cfg(vnc=1)))
    assert "tls-creds" not in plain


def test_vnc_tls_certificates_per_domain(tmp_path):
    from pyxen import pki
    from pyxen.config.xendconfig import XendConfig
    from pyxen.xend import vnctls
    from pyxen.xend.errors import XendError
    etc = tmp_path / "etc"
    conf = XendConfig.parse("(vnc-tls yes)\n")
    with pytest.raises(XendError, match=r"\(vnc-tls yes\): .* does not exist"):
        vnctls.sources(conf, etc)
    d = pki.pki_dir(etc)
    pki.make_ca(d)
    pki.make_host_cert(d, "h1", ["127.0.0.1"])
    run = tmp_path / "run"
    run.mkdir()
    out = vnctls.prepare(conf, etc, run, (12345, 12345))
    assert sorted(p.name for p in out.iterdir()) == ["ca-cert.pem", "server-cert.pem", "server-key.pem"]
    assert (out / "server-key.pem").read_bytes() == (d / "host-key.pem").read_bytes()
    st = (out / "server-key.pem").stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, 12345) and out.stat().st_uid == 12345
    # Xen's layout in vnc-x509-cert-dir wins over the host certificate.
    own = etc / "vnc"
    own.mkdir()
    for n in ("ca-cert.pem", "server-cert.pem", "server-key.pem"):
        (own / n).write_text(f"own {n}\n")
    assert (vnctls.prepare(conf, etc, run, None) / "server-cert.pem").read_text() == "own server-cert.pem\n"
