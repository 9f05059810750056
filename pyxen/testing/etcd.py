"""etcd members for tests: started by the test, killed by PID, removed after.

:class:`EtcdCluster` starts N members (1 or 3) of Debian's ``/usr/bin/etcd``
with TLS from a CA of its own (``pyxen ca``/``pyxen cert --etcd``, the same
code a user runs): every member requires a client certificate signed by it
(``--client-cert-auth``) and so do its peers.  Two placements:

* ``netns=None``: every member on 127.0.0.1 with free ports of its own —
  enough for the store's contract tests, no root networking needed;
* ``netns=[...]``: member *i* in network namespace ``netns[i]`` at address
  ``addrs[i]`` on the standard ports 2379/2380 (the caller made the
  namespaces; :mod:`pyxen.testing.clusternet` does), so a test can cut one
  member off with nftables inside its namespace or kill it.

Nothing outside *root* is touched: the data dirs, certificates and logs
live there, and :meth:`stop` kills exactly the PIDs this object started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .. import pki
from .ports import free_port

ETCD = "/usr/bin/etcd"


def available() -> str | None:
    """Why etcd cannot run here, or None if it can."""
    if not os.access(ETCD, os.X_OK):
        return f"{ETCD} is not installed (Debian's etcd-server, in the Makefile's APT_PKGS)"
    return None


class Member:
    def __init__(self, name: str, ip: str, client_port: int, peer_port: int, netns: str | None):
        self.name, self.ip, self.netns = name, ip, netns
        self.client_port, self.peer_port = client_port, peer_port
        self.proc: subprocess.Popen | None = None

    @property
    def client_url(self) -> str:
        return f"https://{self.ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.ip}:{self.peer_port}"


class EtcdCluster:
    """N etcd members under *root*; use as a context manager or call
    :meth:`start`/:meth:`stop`."""

    def __init__(self, root: Path, n: int = 1, netns: list[str] | None = None,
                 addrs: list[str] | None = None, token: str | None = None):
        self.root = Path(root)
        self.pki = self.root / "pki"
        self.token = token or f"pyxen-test-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
        self.members: list[Member] = []
        for i in range(n):
            if netns:
                self.members.append(Member(f"etcd{i}", addrs[i], 2379, 2380, netns[i]))
            else:
                self.members.append(Member(f"etcd{i}", "127.0.0.1", free_port(), free_port(), None))

    # ------------------------------------------------------------ certificates
    def make_certs(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        if not (self.pki / pki.CA_CERT).exists():
            pki.make_ca(self.pki, "pyxen test etcd CA")
        for m in self.members:
            pki.make_etcd_cert(self.pki, m.name, [m.ip], self.root / m.name / "tls")

    def client_cert(self, name: str, out: Path) -> tuple[str, str, str]:
        """A host certificate for xend *name* signed by this cluster's CA:
        (ca, cert, key) paths."""
        pki.make_host_cert(self.pki, name, out=out)
        return str(out / pki.CA_CERT), str(out / pki.HOST_CERT), str(out / pki.HOST_KEY)

    @property
    def ca(self) -> str:
        return str(self.pki / pki.CA_CERT)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    # ---------------------------------------------------------------- process
    def _argv(self, m: Member) -> list[str]:
        tls = self.root / m.name / "tls"
        cert, key, ca = str(tls / pki.ETCD_CERT), str(tls / pki.ETCD_KEY), str(tls / pki.CA_CERT)
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        argv = [ETCD, "--name", m.name, "--data-dir", str(self.root / m.name / "data"),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--cert-file", cert, "--key-file", key, "--client-cert-auth", "--trusted-ca-file", ca,
                "--peer-cert-file", cert, "--peer-key-file", key, "--peer-client-cert-auth",
                "--peer-trusted-ca-file", ca,
                # Test timings: elections within a second or two, not the
                # defaults' several (the machine is slow, so not shorter).
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                "--logger", "zap", "--log-level", "warn"]
        if m.netns:
            argv = ["ip", "netns", "exec", m.netns, *argv]
        return argv

    def start_member(self, m: Member) -> None:
        (self.root / m.name / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
        log = open(self.root / m.name / "etcd.log", "ab")
        try:
            m.proc = subprocess.Popen(self._argv(m), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        why = available()
        if why:
            raise RuntimeError(why)
        self.make_certs()
        for m in self.members:
            self.start_member(m)
        self.wait_healthy(timeout)
        return self

    def store(self, host: str = "test", timeout: float = 3.0):
        """An EtcdStore on this cluster with a fresh client certificate."""
        from ..etcdstore import EtcdStore
        ca, cert, key = self.client_cert(host, self.root / "clients" / host)
        return EtcdStore(self.endpoints, host, ca, cert, key, timeout=timeout)

    def etcdctl(self, *args: str, ns: str | None = None, client: str = "probe",
                timeout: float = 20, popen: bool = False):
        """Run Debian's etcdctl (an observer independent of pyxen's client)
        against this cluster, in namespace *ns*; with *popen* a running
        process (for ``watch``), else its CompletedProcess."""
        d = self.root / "clients" / f"ctl-{client}"
        if not (d / pki.HOST_CERT).exists():
            self.client_cert(f"ctl-{client}", d)
        argv = ["etcdctl", "--endpoints", ",".join(self.endpoints), "--cacert", str(d / pki.CA_CERT),
                "--cert", str(d / pki.HOST_CERT), "--key", str(d / pki.HOST_KEY),
                "--dial-timeout", "2s", "--command-timeout", "5s", *args]
        if ns:
            argv = ["ip", "netns", "exec", ns, *argv]
        env = dict(os.environ, ETCDCTL_API="3")
        if popen:
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until a linearizable read succeeds (a leader exists)."""
        if self.members[0].netns:
            self._wait_healthy_ctl(timeout)
            return
        from ..store import StoreError
        st = self.store("probe", timeout=2.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                for m in self.members:
                    if m.proc is not None and m.proc.poll() is not None:
                        raise RuntimeError(f"etcd member {m.name} exited ({m.proc.returncode}); "
                                           f"see {self.root / m.name / 'etcd.log'}:\n" + self.log_tail(m))
                try:
                    st.ping()
                    return
                except StoreError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("etcd did not become healthy in %.0f s:\n%s" % (
                            timeout, "\n".join(self.log_tail(m) for m in self.members))) from None
                    time.sleep(0.2)
        finally:
            st.close()

    def _wait_healthy_ctl(self, timeout: float) -> None:
        """In namespaces the members are reached from the first one's."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd member {m.name} exited ({m.proc.returncode}):\n" + self.log_tail(m))
            res = self.etcdctl("get", "--prefix", "--keys-only", "health-probe", ns=self.members[0].netns)
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not become healthy in {timeout:.0f} s: {res.stderr.strip()}\n" +
                                   "\n".join(self.log_tail(m) for m in self.members))
            time.sleep(0.3)

    def log_tail(self, m: Member, n: int = 15) -> str:
        try:
            return "\n".join((self.root / m.name / "etcd.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self, m: Member, sig: int = signal.SIGKILL) -> None:
        """Kill member *m* (by the PID this object started)."""
        if m.proc is not None and m.proc.poll() is None:
            # ip netns exec execs etcd, so the PID is etcd's own.
            os.kill(m.proc.pid, sig)
            m.proc.wait(timeout=10)

    def stop(self) -> None:
        for m in self.members:
            self.kill(m, signal.SIGTERM)
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                os.kill(m.proc.pid, signal.SIGKILL)
                m.proc.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
