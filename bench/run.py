#!/usr/bin/env python3
"""Throughput/latency benchmark: meshgate vs nginx and a bare Python proxy, plus direct upstream.

One run starts a tiny upstream (nginx ``return 200``, or bench/fast_upstream.py when nginx
is missing), then measures with wrk, one target at a time:

* ``direct``   - wrk straight to the upstream (reference ceiling);
* ``nginx``    - nginx reverse proxy, 1 worker, keep-alive pool to the upstream;
* ``bare``     - bench/bare_proxy.py, a minimal uvloop + httptools proxy (Python floor);
* ``meshgate`` - ``meshgate gateway --workers 1`` with a generated gateway.yaml;
* ``aiohttp``  - bench/aiohttp_proxy.py, a reverse proxy written with aiohttp (the Python
  peer of issue 12), and ``caddy`` - Caddy's ``reverse_proxy`` with GOMAXPROCS=1 (Debian
  ``caddy``): only with ``--targets``.

The proxy under test is pinned to one CPU (default 0), the upstream and wrk to another
(default 1), identically for every proxy. Besides requests/s, the CPU time each proxy's
processes use during the measured run (from /proc) gives CPU microseconds per request, a
per-core figure that does not depend on whether the load side kept up. Stdlib only
(bare_proxy.py needs uvloop and httptools, which meshgate depends on anyway); see
bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
UPSTREAM_BODY = "hello from upstream"
TARGETS = ("direct", "nginx", "bare", "meshgate")
# Run only when asked (--targets): meshgate with one rate limit on the route that never
# denies (sliding window keyed by client ip), in process or in a Redis started here;
# meshgate with a JWT-protected route (HS256, every request carries the same token);
# meshgate with the access log on, written to a file in the bench's temporary directory
# (metrics are always on); meshgate with tracing on at the default sample_rate 0.01
# (tracing) and with every request recorded (tracing-all), spans exported to
# bench/otlp_sink.py started here; meshgate with the response cache on the
# route (memory store, every request after the first a HIT): expect >= 1.5x.
# full: the issue's full chain on one route (request id, CORS for the request's Origin,
# JWT verify, a rate limit, metrics, access log to a file); workers2: meshgate
# --workers 2, not pinned (its workers share both CPUs with wrk and the upstream).
# compiled: the meshgate target's gateway run from the mypyc build of its hot modules
# (PYTHONPATH=build/compiled, made by scripts/build-compiled.sh).
EXTRA_TARGETS = (
    "aiohttp",
    "caddy",
    "ratelimit",
    "ratelimit-redis",
    "jwt",
    "observe",
    "tracing",
    "tracing-all",
    "cache",
    "full",
    "workers2",
    "compiled",
)
ALL_TARGETS = TARGETS + EXTRA_TARGETS
JWT_SECRET = "bench-secret-of-at-least-32-bytes!!"
BENCH_ORIGIN = "https://app.example"
# (numerator, denominator) pairs reported as ratios, e.g. meshgate/nginx: requests/s of
# numerator / denominator, and per core = CPU us/request of denominator / numerator.
RATIOS = (
    ("meshgate", "nginx"),
    ("meshgate", "aiohttp"),
    ("meshgate", "caddy"),
    ("meshgate", "bare"),
    ("ratelimit", "meshgate"),
    ("ratelimit-redis", "meshgate"),
    ("jwt", "meshgate"),
    ("observe", "meshgate"),
    ("tracing", "meshgate"),
    ("tracing-all", "meshgate"),
    ("cache", "meshgate"),
    ("full", "nginx"),
    ("full", "meshgate"),
    ("workers2", "meshgate"),
    ("compiled", "meshgate"),
)
PROC = Path("/proc")
MAX_ERROR_RATE = 0.01
STOP_TIMEOUT_S = 5.0


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why, detail has logs."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n{self.detail}" if self.detail else text


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None


class ProcessSet:
    """Every child runs in its own session; stop() kills the whole process group."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def spawn(
        self,
        name: str,
        cmd: list[str],
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        capture: bool = False,
    ) -> Proc:
        log(f"start {name}: {shlex.join(cmd)}")
        out: IO[bytes] | int
        if capture:
            out = subprocess.PIPE
        elif log_path is not None:
            out = log_path.open("ab")
        else:
            out = subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if not capture else subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        popen = proc.popen
        if popen.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, sig)
                try:
                    popen.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # The leader may be gone while children of its group survive: sweep the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        for stream in (popen.stdout, popen.stderr):
            if stream is not None:
                stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # cleanup must go on whatever happens
                log(f"could not stop {proc.name}: {exc}")


# --------------------------------------------------------------------------- pinning


@dataclass
class Pinning:
    proxy: list[str]
    load: list[str]
    note: str


def make_pinning(args: argparse.Namespace) -> Pinning:
    if args.no_pin:
        return Pinning([], [], "unpinned (--no-pin)")
    taskset = shutil.which("taskset")
    if taskset is None:
        return Pinning([], [], "UNPINNED: taskset not found")
    allowed = os.sched_getaffinity(0)
    if args.proxy_cpu == args.load_cpu or not {args.proxy_cpu, args.load_cpu} <= allowed:
        return Pinning([], [], f"UNPINNED: need two distinct usable CPUs, have {sorted(allowed)}")
    return Pinning(
        [taskset, "-c", str(args.proxy_cpu)],
        [taskset, "-c", str(args.load_cpu)],
        f"proxy on CPU {args.proxy_cpu}; upstream and wrk on CPU {args.load_cpu}",
    )


# --------------------------------------------------------------------------- servers


def nginx_conf(prefix: Path, port: int, location: str, extra_http: str = "") -> str:
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65536;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    keepalive_requests 100000;
    keepalive_timeout 75s;
{extra_http}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
{location}
        }}
    }}
}}
"""


def upstream_nginx_conf(prefix: Path, port: int) -> str:
    location = f"""\
            default_type text/plain;
            return 200 "{UPSTREAM_BODY}\\n";"""
    return nginx_conf(prefix, port, location)


def proxy_nginx_conf(prefix: Path, port: int, upstream_port: int) -> str:
    upstream = f"""\
    upstream u {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000;
    }}
"""
    location = """\
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""
    return nginx_conf(prefix, port, location, upstream)


def bench_token() -> str:
    """An HS256 JWT for the jwt target (stdlib only), valid for a day."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": "bench", "exp": int(time.time()) + 86400}
    payload = b64(json.dumps(claims).encode())
    signed = f"{header}.{payload}".encode()
    sig = b64(hmac.new(JWT_SECRET.encode(), signed, hashlib.sha256).digest())
    return f"{header}.{payload}.{sig}"


def caddy_config(port: int, upstream_port: int) -> str:
    """Caddy's reverse_proxy to the upstream: no admin endpoint, no HTTPS, no logs."""
    return f"""{{
\tadmin off
\tauto_https off
}}
:{port} {{
\treverse_proxy 127.0.0.1:{upstream_port}
}}
"""


def target_headers(target: str) -> list[str]:
    """Request header lines a target needs on every request."""
    if target == "jwt":
        return [f"Authorization: Bearer {bench_token()}"]
    if target == "full":
        return [f"Authorization: Bearer {bench_token()}", f"Origin: {BENCH_ORIGIN}"]
    return []


def meshgate_yaml(
    port: int,
    upstream_port: int,
    middleware: str,
    limit: str = "",
    redis_port: int = 0,
    jwt: bool = False,
    access_log: Path | None = None,
    otlp_port: int = 0,
    sample_rate: float = 0.01,
    cache: bool = False,
    idle_timeout_s: float | None = None,
    cors: bool = False,
) -> str:
    """The benchmarked gateway: one route to the upstream; ``limit``: local | redis | "";
    ``jwt``: the route requires a valid HS256 token; ``access_log``: file the access log
    (all fields) is written to; ``otlp_port``: tracing on at ``sample_rate``, spans
    exported to the OTLP sink on that port; ``cache``: the route caches responses (memory store);
    ``idle_timeout_s``: the listener's keep-alive idle timeout (default: meshgate's);
    ``cors``: a CORS policy allowing `BENCH_ORIGIN`."""
    text = f"""\
listener:
  host: 127.0.0.1
  port: {port}
"""
    if idle_timeout_s is not None:
        text += f"  idle_timeout_s: {idle_timeout_s}\n"
    text += f"""\
upstreams:
  - name: bench
    instances:
      - host: 127.0.0.1
        port: {upstream_port}
routes:
  - path: /*
    upstream: bench
"""
    if limit:
        text += f"""\
    rate_limits:
      - {{name: bench, limit: 1000000000, window_s: 10, key: [ip], backend: {limit}}}
"""
    if cache:
        text += "    cache: {}\n"
    if jwt:
        text += "    auth: {required: true}\n"
        text += f"auth: {{jwt: [{{name: bench, algorithms: [HS256], secret: '{JWT_SECRET}'}}]}}\n"
    if limit == "redis":
        text += f"rate_limit: {{redis: {{url: 'redis://127.0.0.1:{redis_port}/0'}}}}\n"
    if access_log is not None:
        text += f"access_log: {{enabled: true, path: '{access_log}'}}\n"
    if otlp_port:
        endpoint = f"http://127.0.0.1:{otlp_port}/v1/traces"
        text += f"tracing: {{enabled: true, sample_rate: {sample_rate}, endpoint: '{endpoint}'}}\n"
    if cors:
        text += f"cors: {{allow_origins: ['{BENCH_ORIGIN}']}}\n"
    if middleware == "none":
        text += "middleware: []\n"
    return text


def meshgate_command(override: str | None) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if override:
        return shlex.split(override), env
    exe = shutil.which("meshgate")
    if exe:
        return [exe], env
    # Not installed: run the in-repo sources.
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "meshgate"], env


COMPILED_DIR = REPO_ROOT / "build" / "compiled"


def gateway_command(build: str, override: str | None) -> tuple[list[str], dict[str, str]]:
    """The command and environment running meshgate from ``build`` (``--build``)."""
    if build == "compiled":
        return compiled_command(override)
    return meshgate_command(override)


def compiled_command(override: str | None) -> tuple[list[str], dict[str, str]]:
    """`meshgate_command` with the compiled build first on PYTHONPATH, checked to be what
    the gateway imports."""
    manifest = COMPILED_DIR / "COMPILED_MODULES.txt"
    if not manifest.is_file():
        raise BenchError(
            f"compiled: no build in {COMPILED_DIR}: run scripts/build-compiled.sh first"
        )
    base, env = meshgate_command(override)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(COMPILED_DIR), env.get("PYTHONPATH")) if p)
    modules = manifest.read_text().split()
    check = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    f = importlib.import_module(name).__file__ or ''\n"
        "    if not f.endswith('.so'): sys.exit(f'{name} imported from {f}')\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", check, *modules], env=env, capture_output=True, text=True
    )
    if found.returncode != 0:
        raise BenchError(
            "compiled: the build is not what Python imports (run scripts/build-compiled.sh "
            f"first): {found.stderr.strip()[-300:]}"
        )
    return base, env


def wait_ready(proc: Proc, port: int, timeout_s: float, headers: Sequence[str] = ()) -> None:
    """Wait until GET / answers 200 with the upstream's body (i.e. proxying works)."""
    extra = dict(line.split(": ", 1) for line in headers)
    deadline = time.monotonic() + timeout_s
    last = "no attempt"
    while time.monotonic() < deadline:
        code = proc.popen.poll()
        if code is not None:
            log_tail = tail(proc.log_path) if proc.log_path else ""
            raise BenchError(f"{proc.name} exited with code {code} during start-up", log_tail)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/", headers=extra)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200 and UPSTREAM_BODY.encode() in body:
                return
            last = f"HTTP {resp.status} {body[:120]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        time.sleep(0.1)
    log_tail = tail(proc.log_path) if proc.log_path else ""
    raise BenchError(
        f"{proc.name} not ready on port {port} after {timeout_s:.0f}s ({last})", log_tail
    )


# --------------------------------------------------------------------------- CPU time


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (the command name, which may hold spaces, is cut off)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:  # gone, or no /proc
        return None
    return text[text.rfind(")") + 2 :].split()


def process_tree(root: int) -> dict[int, list[str]]:
    """Stat fields of root and every live descendant, found through the parent pids."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in PROC.iterdir():
            if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
                stats[int(entry.name)] = fields
                children.setdefault(int(fields[1]), []).append(int(entry.name))  # field 4
    tree: dict[int, list[str]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid]
            todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_s(root: int) -> tuple[float, int] | None:
    """CPU seconds used so far by root and its descendants, and how many processes that is.

    utime + stime (fields 14, 15) of each live process, plus cutime + cstime (16, 17): the
    time of children that exited and were reaped, which leaves their own entry and is added
    to the parent's. The difference between two calls is then the CPU the tree used in
    between, even if a child came and went. None when /proc/ROOT/stat cannot be read.
    """
    tree = process_tree(root)
    if root not in tree:
        return None
    ticks = sum(int(f) for fields in tree.values() for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK"), len(tree)


# --------------------------------------------------------------------------- wrk


@dataclass
class Result:
    target: str
    url: str = ""
    rps: float | None = None
    avg_ms: float | None = None
    p50_ms: float | None = None
    p75_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    )
    errors: int = 0
    error_rate: float | None = None
    # Proxy CPU (process and descendants) over the measured wrk run; None for direct.
    cpu_s: float | None = None
    wall_s: float | None = None
    cpu_us_per_req: float | None = None
    cpu_percent: float | None = None
    cpu_processes: int | None = None
    failure: str | None = None
    failure_log: str | None = None
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        return (
            self.failure is None
            and self.error_rate is not None
            and self.error_rate <= MAX_ERROR_RATE
        )


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(output: str, result: Result) -> Result:
    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    m = find(r"^Requests/sec:\s+([0-9.]+)")
    if m is None:
        raise BenchError(f"wrk output has no Requests/sec line:\n{output}")
    result.rps = float(m.group(1))
    if m := find(r"^\s+Latency\s+(\S+)"):
        result.avg_ms = to_ms(m.group(1))
    for pct in (50, 75, 90, 99):
        if m := find(rf"^\s+{pct}%\s+(\S+)"):
            setattr(result, f"p{pct}_ms", to_ms(m.group(1)))
    if m := find(r"^\s+(\d+) requests in"):
        result.requests = int(m.group(1))
    if m := find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
        keys = ("connect", "read", "write", "timeout")
        result.socket_errors = dict(zip(keys, map(int, m.groups()), strict=True))
    if m := find(r"Non-2xx or 3xx responses: (\d+)"):
        result.non_2xx_3xx = int(m.group(1))
    result.errors = result.non_2xx_3xx + sum(result.socket_errors.values())
    total = max(result.requests, 1)
    result.error_rate = min(result.errors / total, 1.0) if result.requests else 1.0
    return result


def run_wrk(
    procs: ProcessSet,
    pinning: Pinning,
    url: str,
    duration_s: int,
    connections: int,
    latency: bool,
    headers: Sequence[str],
) -> str:
    cmd = [*pinning.load, "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "2s"]
    for line in headers:
        cmd += ["-H", line]
    if latency:
        cmd.append("--latency")
    cmd.append(url)
    proc = procs.spawn("wrk", cmd, capture=True)
    try:
        out, err = proc.popen.communicate(timeout=duration_s + 30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {duration_s + 30}s") from None
    finally:
        procs.stop(proc)
    if proc.popen.returncode != 0:
        raise BenchError(f"wrk exited with {proc.popen.returncode}: {err.decode(errors='replace')}")
    return out.decode(errors="replace")


def measure(
    procs: ProcessSet,
    pinning: Pinning,
    args: argparse.Namespace,
    target: str,
    port: int,
    cpu_pid: int | None = None,
) -> Result:
    """Warm up, then run wrk; with cpu_pid, also the CPU that pid's tree used meanwhile."""
    url = f"http://127.0.0.1:{port}/"
    if args.warmup > 0:
        log(f"{target}: warm-up {args.warmup}s")
        run_wrk(procs, pinning, url, args.warmup, args.connections, False, target_headers(target))
    log(f"{target}: measuring {args.duration}s, {args.connections} connections")
    cpu_before = tree_cpu_s(cpu_pid) if cpu_pid is not None else None
    t0 = time.monotonic()
    output = run_wrk(
        procs, pinning, url, args.duration, args.connections, True, target_headers(target)
    )
    wall_s = time.monotonic() - t0
    cpu_after = tree_cpu_s(cpu_pid) if cpu_pid is not None else None
    if args.verbose:
        print(output, file=sys.stderr)
    result = parse_wrk(output, Result(target, url))
    if cpu_pid is not None and (cpu_before is None or cpu_after is None):
        log(f"{target}: proxy CPU time not available (no /proc/{cpu_pid}/stat)")
    elif cpu_before is not None and cpu_after is not None:
        result.cpu_s = round(cpu_after[0] - cpu_before[0], 3)
        result.wall_s = round(wall_s, 3)
        result.cpu_percent = round(result.cpu_s / wall_s * 100, 1)
        result.cpu_processes = cpu_after[1]
        if result.requests:
            result.cpu_us_per_req = round(result.cpu_s / result.requests * 1e6, 3)
    return result


# --------------------------------------------------------------------------- orchestration


@dataclass
class Context:
    args: argparse.Namespace
    procs: ProcessSet
    pinning: Pinning
    tmp: Path
    info: dict[str, Any] = field(default_factory=dict)


def start_nginx(ctx: Context, name: str, conf: str, pin: list[str]) -> Proc:
    prefix = ctx.tmp / name
    prefix.mkdir(exist_ok=True)  # again in later --rounds
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    nginx = ctx.info["nginx"]
    cmd = [*pin, nginx, "-p", f"{prefix}/", "-c", str(conf_path), "-e", str(prefix / "error.log")]
    return ctx.procs.spawn(name, cmd, log_path=prefix / "stdout.log")


def start_upstream(ctx: Context) -> tuple[Proc, int]:
    port = free_port()
    if ctx.info["upstream"] == "nginx":
        proc = start_nginx(
            ctx, "upstream", upstream_nginx_conf(ctx.tmp / "upstream", port), ctx.pinning.load
        )
    else:
        cmd = [*ctx.pinning.load, sys.executable, str(BENCH_DIR / "fast_upstream.py")]
        cmd += ["--port", str(port)]
        proc = ctx.procs.spawn("upstream", cmd, log_path=ctx.tmp / "upstream.log")
    wait_ready(proc, port, ctx.args.start_timeout)
    return proc, port


def start_redis(ctx: Context) -> int:
    """A redis-server on the load CPU for the ratelimit-redis target; its port."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise BenchError("redis-server not found: apt-get install -y redis-server")
    port = free_port()
    cmd = [*ctx.pinning.load, exe, "--port", str(port), "--bind", "127.0.0.1"]
    cmd += ["--save", "", "--appendonly", "no"]
    proc = ctx.procs.spawn("redis", cmd, log_path=ctx.tmp / "redis.log")
    deadline = time.monotonic() + ctx.args.start_timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return port
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    raise BenchError("redis-server did not start", tail(ctx.tmp / "redis.log"))


def start_otlp_sink(ctx: Context) -> int:
    """bench/otlp_sink.py on the load CPU for the tracing target; its port."""
    port = free_port()
    cmd = [*ctx.pinning.load, sys.executable, str(BENCH_DIR / "otlp_sink.py")]
    cmd += ["--port", str(port)]
    proc = ctx.procs.spawn("otlp-sink", cmd, log_path=ctx.tmp / "otlp-sink.log")
    deadline = time.monotonic() + ctx.args.start_timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return port
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    raise BenchError("the OTLP sink did not start", tail(ctx.tmp / "otlp-sink.log"))


def start_proxy(ctx: Context, target: str, upstream_port: int) -> tuple[Proc, int]:
    port = free_port()
    if target == "nginx":
        conf = proxy_nginx_conf(ctx.tmp / "proxy", port, upstream_port)
        proc = start_nginx(ctx, "proxy", conf, ctx.pinning.proxy)
    elif target in ("bare", "aiohttp"):
        script = BENCH_DIR / f"{target}_proxy.py"
        cmd = [*ctx.pinning.proxy, sys.executable, str(script)]
        cmd += ["--port", str(port), "--upstream-port", str(upstream_port)]
        proc = ctx.procs.spawn(target, cmd, log_path=ctx.tmp / f"{target}.log")
    elif target == "caddy":
        caddy = shutil.which("caddy")
        if caddy is None:
            raise BenchError("caddy not found: apt-get install -y caddy")
        caddyfile = ctx.tmp / "Caddyfile"
        caddyfile.write_text(caddy_config(port, upstream_port))
        cmd = [*ctx.pinning.proxy, caddy, "run", "--config", str(caddyfile)]
        cmd += ["--adapter", "caddyfile"]
        env = {**os.environ, "GOMAXPROCS": "1", "HOME": str(ctx.tmp)}  # one worker, as nginx
        proc = ctx.procs.spawn("caddy", cmd, log_path=ctx.tmp / "caddy.log", env=env)
    else:
        limit = {"ratelimit": "local", "ratelimit-redis": "redis", "full": "local"}.get(target, "")
        redis_port = start_redis(ctx) if limit == "redis" else 0
        cfg = ctx.tmp / "gateway.yaml"
        access_log = ctx.tmp / "access.log" if target in ("observe", "full") else None
        otlp_port = start_otlp_sink(ctx) if target.startswith("tracing") else 0
        yaml_text = meshgate_yaml(
            port,
            upstream_port,
            ctx.args.middleware,
            limit,
            redis_port,
            jwt=target in ("jwt", "full"),
            access_log=access_log,
            otlp_port=otlp_port,
            sample_rate=1.0 if target == "tracing-all" else 0.01,
            cache=target == "cache",
            cors=target == "full",
        )
        cfg.write_text(yaml_text)
        build = "compiled" if target == "compiled" else ctx.args.build
        base, env = gateway_command(build, ctx.args.meshgate_cmd)
        if build == "compiled":
            ctx.info["compiled_build"] = env["PYTHONPATH"]
        else:
            ctx.info["meshgate_cmd"] = shlex.join(base)
        if target == "workers2":
            cmd = [*base, "gateway", "-c", str(cfg), "--workers", "2"]
        else:
            cmd = [*ctx.pinning.proxy, *base, "gateway", "-c", str(cfg), "--workers", "1"]
        proc = ctx.procs.spawn("meshgate", cmd, log_path=ctx.tmp / "meshgate.log", env=env)
    wait_ready(proc, port, ctx.args.start_timeout, target_headers(target))
    return proc, port


def bench_target(ctx: Context, target: str, upstream_port: int) -> Result:
    if target == "direct":
        return measure(ctx.procs, ctx.pinning, ctx.args, target, upstream_port)
    if target == "nginx" and ctx.info["nginx"] is None:
        log("nginx: skipped, nginx is not installed (apt-get install -y nginx-light)")
        return Result(target, skipped="nginx not installed")
    proxy: Proc | None = None
    try:
        proxy, port = start_proxy(ctx, target, upstream_port)
        result = measure(ctx.procs, ctx.pinning, ctx.args, target, port, proxy.popen.pid)
        if proxy.popen.poll() is not None:
            result.failure = f"{target} exited during the run (code {proxy.popen.returncode})"
        return result
    except BenchError as exc:
        log(f"{target} FAILED: {exc}")
        return Result(target, failure=exc.args[0], failure_log=exc.detail or None)
    finally:
        if proxy is not None:
            ctx.procs.stop(proxy)


def git_rev() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def collect_info(args: argparse.Namespace, pinning: Pinning) -> dict[str, Any]:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if args.upstream == "nginx" and nginx is None:
        raise BenchError("--upstream nginx requested but nginx is not installed")
    upstream = "nginx" if args.upstream in ("auto", "nginx") and nginx else "python"
    return {
        "nginx": nginx,
        "upstream": upstream,
        "pinning": pinning.note,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "middleware": args.middleware,
        "build": args.build,
        "git_rev": git_rev(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
    }


def ratio(results: list[Result], num: str, den: str) -> float | None:
    """requests/s of target num divided by that of den; None unless both ran cleanly."""
    by = {r.target: r for r in results}
    a, b = by.get(num), by.get(den)
    if a and b and a.rps and b.rps and a.failure is None and b.failure is None:
        return a.rps / b.rps
    return None


def per_core_ratio(results: list[Result], num: str, den: str) -> float | None:
    """Requests per CPU-second of num relative to den: den's CPU us/request over num's."""
    by = {r.target: r for r in results}
    a, b = by.get(num), by.get(den)
    if not (a and b and a.failure is None and b.failure is None):
        return None
    if a.cpu_us_per_req and b.cpu_us_per_req:
        return b.cpu_us_per_req / a.cpu_us_per_req
    return None


def median_result(runs: list[Result]) -> Result:
    """The run with the median CPU us/request (the first failure, if any failed)."""
    failed = [r for r in runs if not r.ok]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r.cpu_us_per_req or -(r.rps or 0))
    return ordered[(len(ordered) - 1) // 2]


def _median_ratios(per_round: list[dict[str, float | None]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in per_round[0] if per_round else ():
        values = sorted(v for rnd in per_round if (v := rnd[name]) is not None)
        out[name] = statistics.median(values) if values else None
    return out


def ratios(results: list[Result]) -> dict[str, float | None]:
    return {f"{num}/{den}": ratio(results, num, den) for num, den in RATIOS}


def per_core_ratios(results: list[Result]) -> dict[str, float | None]:
    return {f"{num}/{den}": per_core_ratio(results, num, den) for num, den in RATIOS}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(
    info: dict[str, Any],
    results: list[Result],
    rates: dict[str, float | None],
    core_rates: dict[str, float | None],
) -> None:
    print(
        f"upstream={info['upstream']}  connections={info['connections']}  "
        f"duration={info['duration_s']}s  middleware={info['middleware']}  build={info['build']}  "
        f"git={info['git_rev'] or '-'}  load1m={info['loadavg_1m_before']}"
    )
    print(f"pinning: {info['pinning']}")
    header = (
        f"{'target':<16} {'rps':>10} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'cpu µs/req':>11} {'cpu %':>6} {'errors':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        if r.skipped:
            print(f"{r.target:<16} skipped: {r.skipped}")
            continue
        if r.failure:
            print(f"{r.target:<16} FAILED: {r.failure}")
            last = (r.failure_log or "").strip().splitlines()[-1:]
            if last:
                print(f"{'':<16} {last[0][:200]}")
            continue
        errors = f"{r.errors} ({fmt((r.error_rate or 0) * 100, '.2f')}%)"
        print(
            f"{r.target:<16} {fmt(r.rps, '10.0f')} {fmt(r.p50_ms, '9.3f')} "
            f"{fmt(r.p99_ms, '9.3f')} {fmt(r.cpu_us_per_req, '11.2f'):>11} "
            f"{fmt(r.cpu_percent, '6.1f'):>6} {errors:>14}"
        )
    for name, rate in rates.items():
        print(f"{name} rps ratio: {fmt(rate, '.3f')}")
    for name, rate in core_rates.items():
        num, den = name.split("/")
        print(f"{name} per-core ratio: {fmt(rate, '.3f')} ({den} cpu µs/req / {num} cpu µs/req)")
    for name in core_rates:
        per_round = [rnd[name] for rnd in info.get("per_round_per_core_ratios", [])]
        if any(v is not None for v in per_round):
            shown = ", ".join(fmt(v, ".3f") for v in per_round)
            print(f"{name} per-core ratio by round: {shown} (median above)")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Pinning, start-up and output options every bench script takes."""
    p.add_argument("--proxy-cpu", type=int, default=0, help="CPU for the proxy (default 0)")
    p.add_argument("--load-cpu", type=int, default=1, help="CPU for upstream and wrk (default 1)")
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument("--start-timeout", type=float, default=30.0, help="seconds to become ready")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    add_build_arg(p)


def add_build_arg(p: argparse.ArgumentParser) -> None:
    """``--build pure|compiled``, served by `gateway_command`."""
    p.add_argument(
        "--build",
        choices=("pure", "compiled"),
        default="pure",
        help="compiled: meshgate runs from build/compiled (scripts/build-compiled.sh)",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark meshgate against nginx, a bare Python proxy and direct upstream."
    )
    p.add_argument("--duration", type=int, default=10, help="measured seconds (default 10)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds, 0 = none (default 2)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the targets this many times, every other round in reverse order; each "
        "ratio is the median of its per-round ratios, each row the median round (default 1)",
    )
    p.add_argument(
        "--middleware",
        choices=("builtins", "none"),
        default="builtins",
        help="builtins: default chain (request_id, response_time); none: 'middleware: []'",
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(ALL_TARGETS)} (default {','.join(TARGETS)})",
    )
    p.add_argument(
        "--upstream",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="upstream server: nginx if installed (auto), or bench/fast_upstream.py",
    )
    p.add_argument(
        "--meshgate-cmd", help="command to use instead of 'meshgate', e.g. 'python -m meshgate'"
    )
    add_common_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="echo raw wrk output to stderr")
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(ALL_TARGETS))
    if unknown or not targets:
        p.error(f"--targets: unknown {unknown}; choose from {', '.join(ALL_TARGETS)}")
    args.targets = [t for t in ALL_TARGETS if t in targets]
    if args.duration < 1 or args.connections < 1 or args.warmup < 0:
        p.error("--duration and --connections must be >= 1, --warmup >= 0")
    return args


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk not found: apt-get install -y wrk")
        return 2
    # Explicit handlers: SIGINT may be ignored when started in the background.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)

    procs = ProcessSet()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-"))
    rounds: list[list[Result]] = []  # per round, one result per target (targets' order)
    try:
        pinning = make_pinning(args)
        if not pinning.proxy:
            log(pinning.note)
        ctx = Context(args, procs, pinning, tmp, collect_info(args, pinning))
        _, upstream_port = start_upstream(ctx)
        for number in range(max(1, args.rounds)):
            order = args.targets if number % 2 == 0 else list(reversed(args.targets))
            done = {t: bench_target(ctx, t, upstream_port) for t in order}
            rounds.append([done[t] for t in args.targets])
    except BenchError as exc:
        log(f"FAILED: {exc}")
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}, indent=2))
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    results = [median_result([rnd[i] for rnd in rounds]) for i in range(len(args.targets))]
    rates = _median_ratios([ratios(rnd) for rnd in rounds])
    core_rates = _median_ratios([per_core_ratios(rnd) for rnd in rounds])
    if len(rounds) > 1:
        ctx.info["rounds"] = len(rounds)
        ctx.info["per_round_per_core_ratios"] = [per_core_ratios(rnd) for rnd in rounds]
    if args.json:
        doc = {
            "info": ctx.info,
            "results": [{**asdict(r), "ok": r.ok} for r in results],
            # meshgate_nginx_rps_ratio, meshgate_bare_rps_ratio
            **{f"{k.replace('/', '_')}_rps_ratio": v for k, v in rates.items()},
            # meshgate_nginx_per_core_ratio, meshgate_bare_per_core_ratio
            **{f"{k.replace('/', '_')}_per_core_ratio": v for k, v in core_rates.items()},
            "ok": all(r.ok for r in results),
        }
        print(json.dumps(doc, indent=2))
    else:
        print_table(ctx.info, results, rates, core_rates)

    bad = [r for r in results if not r.ok]
    for r in bad:
        why = r.failure or f"error rate {fmt((r.error_rate or 0) * 100, '.2f')}% > 1%"
        log(f"{r.target}: {why}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
