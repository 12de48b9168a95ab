"""A real ``redis-server`` for tests: started on a free loopback port, killable, restartable.

Nothing is skipped: when ``redis-server`` is not installed the tests that need it fail
with a message saying so (CI installs the Debian ``redis-server`` package).

Use from any test module::

    from tests.redis_server import RedisServer, redis_server_fixture

    redis_server = redis_server_fixture()                                # one per test
    shared_redis = redis_server_fixture("shared_redis", scope="module")  # one per module

    async def test_something(redis_server: RedisServer):
        client = redis.asyncio.Redis.from_url(redis_server.url)
        ...
        redis_server.kill()       # SIGKILL: Redis gone (fail-open tests)
        redis_server.restart()    # same port again
        with redis_server.paused():   # SIGSTOP ... SIGCONT: Redis stops answering
            ...

The server runs without persistence (``--save '' --appendonly no``), so a restart
starts empty. Servers still running when the interpreter exits are killed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

_DEBIAN_PATH = "/usr/bin/redis-server"
_RUNNING: set[RedisServer] = set()
Scope = Literal["session", "package", "module", "class", "function"]


class RedisServerError(RuntimeError):
    """redis-server is missing, did not start, or did not answer."""


def find_redis_server() -> str:
    """Path of the redis-server binary ($REDIS_SERVER, PATH, then the Debian path)."""
    candidates = [os.environ.get("REDIS_SERVER"), shutil.which("redis-server"), _DEBIAN_PATH]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise RedisServerError(
        "redis-server not found (looked at $REDIS_SERVER, PATH and /usr/bin/redis-server); "
        "install it (Debian: apt-get install redis-server) - the Redis rate limit tests "
        "need a real server and are not skipped"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_pid(port: int, timeout_s: float) -> int | None:
    """The process id of the Redis answering on ``port`` (None: nothing answers yet)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"INFO server\r\n")
            data = b""
            while len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                data += chunk
                match = re.search(rb"\r\nprocess_id:(\d+)\r\n", data)
                if match:
                    return int(match.group(1))
    except OSError:
        pass
    return None


class RedisServer:
    """One redis-server process on 127.0.0.1; ``start()`` picks a free port unless given one."""

    def __init__(self, port: int | None = None, *, executable: str | None = None) -> None:
        self.executable = executable or find_redis_server()
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkstemp(prefix="redis-server-", suffix=".log")[1])

    @property
    def url(self) -> str:
        if self.port is None:
            raise RedisServerError("RedisServer has no port yet: call start() first")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start and wait until PING answers. A picked port taken meanwhile: pick another."""
        if self.running:
            raise RedisServerError(f"redis-server already running on port {self.port}")
        fixed = self.port is not None
        for _attempt in range(1 if fixed else 5):
            port = self.port if fixed and self.port is not None else _free_port()
            if self._spawn(port, timeout_s):
                self.port = port
                return self
        raise RedisServerError(
            f"redis-server did not answer PING on 127.0.0.1:{port} within {timeout_s} s; "
            f"its log ({self._log}):\n{self.log_tail()}"
        )

    def _spawn(self, port: int, timeout_s: float) -> bool:
        cmd = [self.executable, "--port", str(port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip
        with self._log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:  # exited: port in use, bad option...
                break
            pid = _server_pid(port, 0.5)
            if pid == self.proc.pid:
                return True
            if pid is not None:  # another server took the port first
                break
            time.sleep(0.01)
        self._terminate(signal.SIGKILL)
        return False

    def _terminate(self, sig: signal.Signals, grace_s: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            proc.send_signal(sig)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the server vanishes at once."""
        self._terminate(signal.SIGKILL)

    def restart(self, timeout_s: float = 10.0) -> RedisServer:
        """Stop if running, start again on the same port (empty: no persistence)."""
        self.stop()
        return self.start(timeout_s)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers."""
        if self.proc is None:
            raise RedisServerError("redis-server is not running")
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP for the block, SIGCONT after it whatever happens."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Kill the server and remove its log."""
        self.kill()
        with contextlib.suppress(OSError):
            self._log.unlink()

    def __enter__(self) -> RedisServer:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_RUNNING):
        server.kill()


def redis_server_fixture(name: str = "redis_server", *, scope: Scope = "function") -> Any:
    """A pytest fixture called ``name`` yielding a started ``RedisServer``.

    Assign it to the same name at module level (or in a conftest):
    ``redis_server = redis_server_fixture()`` gives each test its own server;
    ``shared_redis = redis_server_fixture("shared_redis", scope="module")`` shares one
    (do not kill that one). Fails, never skips, when redis-server is missing or does
    not start.
    """

    def _fixture() -> Iterator[RedisServer]:
        problem = None
        try:
            server = RedisServer().start()
        except RedisServerError as e:
            problem = str(e)
        if problem is not None:
            pytest.fail(problem, pytrace=False)
        try:
            yield server
        finally:
            server.close()

    return pytest.fixture(scope=scope, name=name)(_fixture)
