# pyxen: build, demo, test, bench.  Every target installs what it needs
# (Debian packages and a Python venv) so a fresh Debian 12 machine works.

VENV    ?= /opt/pyxen/venv
# Where `make install` puts things.  DESTDIR stages the whole tree elsewhere
# (packaging, and the tests: they never install into the real /).
DESTDIR ?=
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/sbin
SYSCONFDIR ?= /etc
UNITDIR ?= $(SYSCONFDIR)/systemd/system
INITDIR ?= $(SYSCONFDIR)/init.d
XENDIR  ?= $(SYSCONFDIR)/xen
MANDIR  ?= $(PREFIX)/share/man
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
PY      := $(VENV)/bin/python
# The stamp names this source tree: a venv installed editable from another
# checkout (a CI clone elsewhere) must be installed again from this one.
STAMP   := $(VENV)/.pyxen-deps$(subst /,-,$(CURDIR))
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
            syslinux syslinux-common isolinux mtools dosfstools xorriso ovmf tesseract-ocr \
            etcd-server etcd-client util-linux
# (etcd-server, etcd-client: the cluster store is etcd 3.4 (docs/cluster.md);
#  the cluster tests start their own members, never the packaged service.)
# (util-linux: setpriv, which starts every QEMU confined (pyxen/xend/confine.py);
#  Essential in Debian, named so a minimal image is told.)
# (syslinux..xorriso: `make hvm-images` builds the HVM test disk and ISO
#  without mounting anything; ovmf: UEFI for HVM guests; tesseract-ocr: the
#  HVM tests read the guest's text off a screendump.)
# (chromium: the web console's tests drive it headless through Playwright.
#  node and npm build the front-end bundles: `make web` installs Debian's
#  nodejs/npm only when no npm is present, so a NodeSource node is left alone.)
WEB_STAMP := pyxen/web/static/vendor/.built

.PHONY: all deps install uninstall image hvm-images web demo test unit bench fuzz clean man docs

all: image

$(STAMP): pyproject.toml constraints.txt
	@if ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PKGS); fi
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip >/dev/null
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test,docs]'
	touch $@

deps: $(STAMP)
	@$(MAKE) --no-print-directory install

# What a host keeps: the commands on PATH, xend and xendomains as systemd
# units and SysV init scripts (§3.3, §4.1: /etc/init.d/xend, `service
# xendomains start`, LSB and chkconfig headers), the network/vif scripts in
# /etc/xen/scripts (left alone once an administrator edited them, as xend
# does), man pages and bash completion (whatever pyxen/data/man and
# pyxen/data/completion hold: none yet is fine).  Installs from this tree
# only: it needs no venv, so `make install DESTDIR=/tmp/x` works anywhere.
INIT_SRC := pyxen/data/init
SCRIPTS  := $(filter-out %/__init__.py %/__pycache__,$(wildcard pyxen/data/scripts/*))
MANPAGES ?= $(wildcard pyxen/data/man/*.[1-8])
COMPLETION_SRC ?= pyxen/data/completion/xm
COMMANDS := xend xm xentop xendomains pyxen-image pyxen
install:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(INITDIR) \
		$(DESTDIR)$(XENDIR)/scripts $(DESTDIR)$(XENDIR)/auto
	for c in $(COMMANDS); do ln -sfn $(VENV)/bin/$$c $(DESTDIR)$(BINDIR)/$$c; done
	for u in xend xendomains; do \
		sed 's|/usr/local/sbin|$(BINDIR)|g' $(INIT_SRC)/$$u.service > $(DESTDIR)$(UNITDIR)/$$u.service.tmp && \
		chmod 644 $(DESTDIR)$(UNITDIR)/$$u.service.tmp && \
		mv -f $(DESTDIR)$(UNITDIR)/$$u.service.tmp $(DESTDIR)$(UNITDIR)/$$u.service && \
		sed 's|/usr/local/sbin:|$(BINDIR):|' $(INIT_SRC)/$$u.sysv > $(DESTDIR)$(INITDIR)/$$u.tmp && \
		chmod 755 $(DESTDIR)$(INITDIR)/$$u.tmp && mv -f $(DESTDIR)$(INITDIR)/$$u.tmp $(DESTDIR)$(INITDIR)/$$u || exit 1; \
	done
	for f in $(SCRIPTS); do d=$(DESTDIR)$(XENDIR)/scripts/$${f##*/}; \
		if [ -e "$$d" ] && ! grep -q pyxen-managed "$$d"; then echo "keeping $$d (edited locally)"; continue; fi; \
		case $$f in *.sh) m=644;; *) m=755;; esac; install -m $$m $$f $$d || exit 1; done
	for m in $(MANPAGES); do s=$${m##*.}; install -d $(DESTDIR)$(MANDIR)/man$$s && \
		install -m 644 $$m $(DESTDIR)$(MANDIR)/man$$s/ || exit 1; done
	if [ -f $(COMPLETION_SRC) ]; then install -d $(DESTDIR)$(COMPLETIONDIR) && \
		install -m 644 $(COMPLETION_SRC) $(DESTDIR)$(COMPLETIONDIR)/xm; fi
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
		systemctl daemon-reload; fi

# Removes what `install` put there; keeps configuration, domains, state,
# logs, and scripts an administrator edited (no pyxen-managed line).
uninstall:
	for c in $(COMMANDS); do rm -f $(DESTDIR)$(BINDIR)/$$c; done
	for u in xend xendomains; do rm -f $(DESTDIR)$(UNITDIR)/$$u.service $(DESTDIR)$(INITDIR)/$$u; done
	for f in $(SCRIPTS); do d=$(DESTDIR)$(XENDIR)/scripts/$${f##*/}; \
		if [ -f "$$d" ] && grep -q pyxen-managed "$$d"; then rm -f "$$d"; fi; done
	-rmdir $(DESTDIR)$(XENDIR)/scripts 2>/dev/null
	for m in $(MANPAGES); do rm -f $(DESTDIR)$(MANDIR)/man$${m##*.}/$${m##*/}; done
	rm -f $(DESTDIR)$(COMPLETIONDIR)/xm
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
		systemctl daemon-reload; fi

image: deps
	$(VENV)/bin/pyxen-image build

# A bootable disk (MBR, FAT16, SYSLINUX) and ISO (ISOLINUX) of the default
# guest, for HVM domains: $(PYXEN_IMAGES or /var/lib/pyxen/images)/hvm/.
# Their kernel is Debian's generic one (images/hvm-kernel: the default
# guest's initramfs on it), which has drivers for the emulated PC's IDE/SATA
# disks and rtl8139/e1000/ne2k NICs; PV guests keep the smaller cloud kernel.
IMAGES_DIR = $${PYXEN_IMAGES:-/var/lib/pyxen/images}
hvm-images: image
	$(VENV)/bin/pyxen-image build --kernel-package linux-image-amd64 --dest $(IMAGES_DIR)/hvm-kernel
	$(VENV)/bin/pyxen-image hvm-disk --source $(IMAGES_DIR)/hvm-kernel
	$(VENV)/bin/pyxen-image hvm-iso --source $(IMAGES_DIR)/hvm-kernel

# Front-end packages (xterm.js, noVNC) from npm, pinned by web/package-lock.json,
# bundled into the package: xend's page fetches nothing at run time.
$(WEB_STAMP): web/package.json web/package-lock.json web/build.mjs
	@command -v npm >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	cd web && npm ci --no-audit --no-fund && node build.mjs
	touch $@

web: $(WEB_STAMP)

demo: image web install
	PATH=$(BINDIR):$$PATH $(PY) -m pyxen.demo

test: image hvm-images web
	PATH=$(BINDIR):$$PATH $(PY) -m pytest -q tests

# The user's guide (docs/guide, English and Chinese) as static HTML in
# build/guide/ (gitignored).  --strict: a broken link or a missing page fails.
docs: deps
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -f docs/guide/mkdocs.yml -d $(CURDIR)/build/guide

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
