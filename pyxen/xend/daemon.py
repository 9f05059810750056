"""The xend daemon process: logging, state, domains, the API server.

Stopping xend (SIGTERM) lets go of every QEMU without stopping it; the
next xend adopts them again.  A lock file keeps a second xend off the same
PYXEN_ROOT.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import resource
import signal
from pathlib import Path

from aiohttp import web

from ..config.xendconfig import XendConfig
from ..paths import Paths
from ..filestore import FileStore
from ..store import StoreError
from ..fileutil import atomic_write
from . import apitoken, cluster, httpguard, httptls, layout, logsetup, preauth
from .accel import Accelerator
from .api import Api
from .domains import Domains
from .errors import XendError
from .network import HostNetwork

log = logging.getLogger("pyxen.xend")


class StartupError(Exception):
    pass


def setup_logging(paths: Paths, cfg: XendConfig) -> None:
    logsetup.setup_logging(cfg["logfile"] or str(paths.xend_log), cfg["loglevel"])


def raise_fd_limit() -> None:
    """Use the whole hard limit of open files: every connection, QEMU
    monitor and disk is a descriptor (the shipped units raise it too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, e)


def take_lock(paths: Paths) -> int:
    fd = os.open(paths.run / "xend.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(f"another xend is running on {paths.root}") from None
    return fd


async def serve(paths: Paths, cfg: XendConfig, ready) -> None:
    # The HTTPS API's certificates first: missing files stop xend before
    # it touches the network or any domain.
    tls = httptls.context(cfg, paths.etc) if cfg["xend-http-server"] else None
    node = None
    if cluster.configured(cfg):
        # A cluster's state is etcd's; unreachable at start: not started.
        store = cluster.open_store(paths, cfg)
    else:
        try:
            store = FileStore(paths.state)      # upgrades a store of the first layout, once
        except StoreError as e:
            raise XendError(str(e)) from None
    accel = Accelerator(paths, cfg, store)
    net = HostNetwork(paths, cfg, store)
    domains = Domains(paths, cfg, store, accel, net)
    if store.clustered:
        node = cluster.ClusterNode(paths, cfg, store)
        domains.cluster = node
        node.join(domains)          # before adoption: the domains' locks go on this lease
    accel.start()
    # The network (network-script, vnets) before the domains that use it.
    await net.start()
    await domains.adopt_all()
    if node is not None:
        await node.start()
        # Placement, host-failure restart and the cluster listing (pyxen/xend/clusterops.py).
        from . import clusterops
        clusterops.attach(domains, node)
    relocation = None
    if cfg["xend-relocation-server"]:
        from .relocation import RelocationServer
        relocation = RelocationServer(domains)
        await relocation.start()
    token = None
    if cfg["xend-http-server"] and cfg["xend-http-auth"] == "token":
        token = apitoken.load_token(apitoken.token_path(cfg, paths.etc))
    cert_auth = cfg["xend-http-server"] and cfg["xend-http-auth"] == "cert"
    api = Api(domains, paths.xend_log, logsetup.RING, token, client_certs=cert_auth)
    app = api.app()
    # The TCP API's connections are strangers until authenticated: one
    # budget for them (httpguard), outermost so it runs before any handler.
    guard = httpguard.Guard(preauth.from_config(cfg, "api", logging.getLogger("pyxen.api"),
                                                "refused HTTPS connection" if tls else "refused HTTP connection"),
                            trust_all=bool(cert_auth))
    app.middlewares.insert(0, guard.middleware)
    app.on_response_prepare.append(httpguard.security_headers)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    # xm finds the socket at the default path (or $XM_SERVER); a configured
    # xend-unix-path is honoured for clients that are told about it.
    sock = Path(cfg["xend-unix-path"]) if cfg["xend-unix-path"] else paths.socket
    try:
        sock.unlink()
    except FileNotFoundError:
        pass
    old = os.umask(0o077)   # the API socket is root-only
    try:
        site = web.UnixSite(runner, str(sock))
        await site.start()
    finally:
        os.umask(old)
    sites = [site]
    if cfg["xend-http-server"]:
        host = cfg["xend-address"] or None
        tcp = httptls.TlsSite(runner, host, cfg["xend-port"], tls, guard) if tls else httpguard.GuardedSite(
            runner, host, cfg["xend-port"], guard)
        await tcp.start()
        sites.append(tcp)
        what = "HTTPS" if tls else "HTTP"
        if cert_auth:
            log.info("HTTPS API on TCP %s:%d, client certificate signed by the CA required",
                     host or "*", cfg["xend-port"])
        elif token is None:
            log.warning("%s API on TCP %s:%d WITHOUT authentication (xend-http-auth none)",
                        what, host or "*", cfg["xend-port"])
        else:
            log.info("%s API on TCP %s:%d, bearer token required", what, host or "*", cfg["xend-port"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    log.info("xend started on %s (pid %d), %d domain(s) adopted", sock, os.getpid(), len(domains.all()))
    ready(None, net.problems)    # `xend start` prints these on stderr
    await stop.wait()
    log.info("xend stopping; domains keep running")
    if relocation is not None:
        await relocation.stop()
    if node is not None:
        await node.stop()
    await runner.cleanup()
    guard.budget.close()
    await domains.detach_all()
    await net.stop(len(domains.all()))
    try:
        sock.unlink()
    except FileNotFoundError:
        pass


def run(paths: Paths, ready=lambda err: None) -> int:
    """Run xend in this process until SIGTERM.  *ready(err)* is called once."""
    try:
        layout.ensure(paths)
        cfg = XendConfig.load(paths.xend_config)
    except Exception as e:
        ready(str(e))
        return 1
    setup_logging(paths, cfg)
    raise_fd_limit()
    cfg.log_warnings()
    try:
        lock = take_lock(paths)
    except StartupError as e:
        ready(str(e))
        return 1
    atomic_write(paths.pidfile, f"{os.getpid()}\n".encode(), 0o644)
    called = False

    def once(err, warnings=()):
        nonlocal called
        if not called:
            called = True
            ready(err, warnings) if warnings else ready(err)
    try:
        asyncio.run(serve(paths, cfg, once))
    except XendError as e:
        log.error("xend cannot start: %s", e)
        once(str(e))
        return 1
    except Exception as e:
        log.exception("xend failed")
        once(f"{type(e).__name__}: {e}")
        return 1
    finally:
        try:
            if paths.pidfile.read_text().strip() == str(os.getpid()):
                paths.pidfile.unlink()
        except OSError:
            pass
        os.close(lock)
    return 0
