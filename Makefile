# pyxen: build, demo, test, bench.  Every target installs what it needs
# (Debian packages and a Python venv) so a fresh Debian 12 machine works.

VENV    ?= /opt/pyxen/venv
BINDIR  ?= /usr/local/sbin
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.pyxen-deps
# Debian packages: QEMU and its tools, busybox for the guest initramfs,
# decompressors for kernel payloads, e2fsprogs for disk images in tests;
# for virtual networks, nftables (ip= anti-spoofing, network-nat's NAT) and
# dnsmasq-base (vif-nat's DHCP; the binary only, no system service);
# for disks, nfs-ganesha(-vfs): a userspace NFS server for NFS-root guests
# where the host kernel has no nfsd (tests start it themselves).
APT_PKGS := qemu-system-x86 qemu-utils busybox-static lz4 zstd xz-utils cpio e2fsprogs \
            python3-venv iproute2 procps nftables dnsmasq-base nfs-ganesha nfs-ganesha-vfs

.PHONY: all deps image demo test unit bench clean

all: image

$(STAMP): pyproject.toml constraints.txt
	@if ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PKGS); fi
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip >/dev/null
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	@mkdir -p $(BINDIR)
	ln -sf $(VENV)/bin/xend $(VENV)/bin/xm $(VENV)/bin/xentop $(VENV)/bin/xendomains $(VENV)/bin/pyxen-image $(BINDIR)/
	touch $@

deps: $(STAMP)

image: deps
	$(VENV)/bin/pyxen-image build

demo: image
	PATH=$(BINDIR):$$PATH $(PY) -m pyxen.demo

test: image
	PATH=$(BINDIR):$$PATH $(PY) -m pytest -q tests

unit: deps
	$(PY) -m pytest -q tests/unit

bench: image
	PATH=$(BINDIR):$$PATH $(PY) -m bench

clean:
	rm -rf build *.egg-info .pytest_cache
