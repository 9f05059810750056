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
# where the host kernel has no nfsd (tests start it themselves);
# swtpm and swtpm-tools: the software TPM 2.0 behind vtpm = [...].
APT_PKGS := qemu-system-x86 qemu-utils busybox-static lz4 zstd xz-utils cpio e2fsprogs \
            python3-venv iproute2 procps nftables dnsmasq-base chromium \
            nfs-ganesha nfs-ganesha-vfs swtpm swtpm-tools \
            syslinux syslinux-common isolinux mtools dosfstools xorriso ovmf tesseract-ocr
# (syslinux..xorriso: `make hvm-images` builds the HVM test disk and ISO
#  without mounting anything; ovmf: UEFI for HVM guests; tesseract-ocr: the
#  HVM tests read the guest's text off a screendump.)
# (chromium: the web console's tests drive it headless through Playwright.
#  node and npm build the front-end bundles: `make web` installs Debian's
#  nodejs/npm only when no npm is present, so a NodeSource node is left alone.)
WEB_STAMP := pyxen/web/static/vendor/.built

.PHONY: all deps image hvm-images web demo test unit bench fuzz clean man

all: image

$(STAMP): pyproject.toml constraints.txt
	@if ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PKGS); fi
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip >/dev/null
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	@mkdir -p $(BINDIR)
	ln -sf $(VENV)/bin/xend $(VENV)/bin/xm $(VENV)/bin/xentop $(VENV)/bin/xendomains $(VENV)/bin/pyxen-image $(VENV)/bin/pyxen $(BINDIR)/
	touch $@

deps: $(STAMP)

image: deps
	$(VENV)/bin/pyxen-image build

# A bootable disk (MBR, FAT16, SYSLINUX) and ISO (ISOLINUX) of the default
# guest, for HVM domains: $(PYXEN_IMAGES or /var/lib/pyxen/images)/hvm/.
hvm-images: image
	$(VENV)/bin/pyxen-image hvm-disk
	$(VENV)/bin/pyxen-image hvm-iso

# Front-end packages (xterm.js, noVNC) from npm, pinned by web/package-lock.json,
# bundled into the package: xend's page fetches nothing at run time.
$(WEB_STAMP): web/package.json web/package-lock.json web/build.mjs
	@command -v npm >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	cd web && npm ci --no-audit --no-fund && node build.mjs
	touch $@

web: $(WEB_STAMP)

demo: image web
	PATH=$(BINDIR):$$PATH $(PY) -m pyxen.demo

test: image web
	PATH=$(BINDIR):$$PATH $(PY) -m pytest -q tests

unit: deps
	$(PY) -m pytest -q tests/unit

# Man pages and bash completion, generated from the command and option
# tables into pyxen/data/man and pyxen/data/completion (committed; a unit
# test fails when they are stale).
man: deps
	$(PY) -m pyxen.docgen

# Long fuzzing runs (atheris, from its PyPI wheel) of every hostile-input
# parser, FUZZ_SECONDS each, growing a corpus per target in FUZZ_DIR;
# findings are written there as crash-*/timeout-* files.  `make test`
# runs the same targets for a bounded number of inputs (tests/unit/test_fuzz.py).
FUZZ_SECONDS ?= 600
FUZZ_DIR     ?= /var/tmp/pyxen-fuzz
FUZZ_TARGETS := sxp xl domconfig specs xendconfig savefile api
fuzz: deps
	@for t in $(FUZZ_TARGETS); do mkdir -p $(FUZZ_DIR)/$$t && \
		TMPDIR=$(FUZZ_DIR) $(PY) tests/fuzz/targets.py $$t -max_total_time=$(FUZZ_SECONDS) -timeout=20 \
			-artifact_prefix=$(FUZZ_DIR)/$$t- $(FUZZ_DIR)/$$t || exit 1; done

bench: image
	PATH=$(BINDIR):$$PATH $(PY) -m bench

clean:
	rm -rf build *.egg-info .pytest_cache web/node_modules pyxen/web/static/vendor
