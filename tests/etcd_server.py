"""A real single-member ``etcd`` for tests, on free loopback ports with a temp data dir.

Nothing is skipped: without the binary the tests fail saying so (CI installs the
Debian ``etcd-server`` package, see scripts/test.sh).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

_RUNNING: set[EtcdServer] = set()


class EtcdServerError(RuntimeError):
    pass


def find_etcd() -> str:
    for path in (os.environ.get("ETCD"), shutil.which("etcd"), "/usr/bin/etcd"):
        if path and os.access(path, os.X_OK):
            return path
    raise EtcdServerError(
        "etcd not found (looked at $ETCD, PATH and /usr/bin/etcd); install it "
        "(Debian: apt-get install etcd-server) - the control plane HA tests need a real etcd"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    def __init__(self) -> None:
        self.executable = find_etcd()
        self.data_dir = Path(tempfile.mkdtemp(prefix="etcd-test-"))
        self.client_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = self.data_dir / "etcd.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout_s: float = 20.0) -> EtcdServer:
        for _attempt in range(3):
            self.client_port, peer = _free_port(), _free_port()
            client_url = f"http://127.0.0.1:{self.client_port}"
            peer_url = f"http://127.0.0.1:{peer}"
            cmd = [
                self.executable, "--name", "t", "--data-dir", str(self.data_dir / "data"),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"t={peer_url}", "--log-level", "warn",
            ]  # fmt: skip
            with self._log.open("ab") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            _RUNNING.add(self)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"{client_url}/health", timeout=1) as resp:
                        if b"true" in resp.read():
                            return self
                except OSError:
                    pass
                time.sleep(0.05)
            self.kill()
        raise EtcdServerError(f"etcd did not become healthy; log:\n{self.log_tail()}")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class EtcdCluster:
    """``size`` etcd members on loopback, one raft cluster (for member failover tests)."""

    def __init__(self, size: int = 3) -> None:
        self.executable = find_etcd()
        self.data_dir = Path(tempfile.mkdtemp(prefix="etcd-cluster-"))
        self.size = size
        self.client_ports = [_free_port() for _ in range(size)]
        self.peer_ports = [_free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def start(self, timeout_s: float = 30.0) -> EtcdCluster:
        cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        for i in range(self.size):
            client_url = f"http://127.0.0.1:{self.client_ports[i]}"
            peer_url = f"http://127.0.0.1:{self.peer_ports[i]}"
            cmd = [
                self.executable, "--name", f"m{i}", "--data-dir", str(self.data_dir / f"m{i}"),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--log-level", "warn",
            ]  # fmt: skip
            with (self.data_dir / f"m{i}.log").open("ab") as log:
                self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _CLUSTERS.add(self)
        deadline = time.monotonic() + timeout_s
        pending = set(range(self.size))
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                try:
                    url = f"http://127.0.0.1:{self.client_ports[i]}/health"
                    with urllib.request.urlopen(url, timeout=1) as resp:
                        if b"true" in resp.read():
                            pending.discard(i)
                except OSError:
                    pass
            time.sleep(0.05)
        if pending:
            self.close()
            raise EtcdServerError(f"etcd members {sorted(pending)} did not become healthy")
        return self

    def kill(self, i: int) -> None:
        proc, self.procs[i] = self.procs[i], None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        for i in range(self.size):
            self.kill(i)
        _CLUSTERS.discard(self)
        shutil.rmtree(self.data_dir, ignore_errors=True)


_CLUSTERS: set[EtcdCluster] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_RUNNING):
        server.kill()
    for cluster in list(_CLUSTERS):
        cluster.close()


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    problem = None
    try:
        cluster = EtcdCluster().start()
    except EtcdServerError as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    problem = None
    try:
        server = EtcdServer().start()
    except EtcdServerError as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.close()
