#!/usr/bin/env python3
"""Memory of idle keep-alive client connections, and RSS flatness under a bounded soak.

Starts the Python upstream (bench/fast_upstream.py) and ``meshgate gateway --workers 1``,
then:

1. opens ``--connections`` client connections (default 10,000), each sends one GET and
   reads the answer, then stays open and idle; reports the gateway's RSS before and after
   and the cost per connection (issue 12: 10,000 idle connections in <= 100 MB RSS);
2. closes them, then runs wrk with 64 connections for ``--soak-s`` seconds (default 300,
   bounded; 0 skips it), sampling the gateway's RSS every ``--sample-s`` seconds, and
   reports the spread of the samples after the first minute (issue 12: flat within +-5 %).

Everything listens on 127.0.0.1. Needs wrk for the soak and an open-files limit above the
connection count (``ulimit -n``).

    python bench/connections.py --connections 10000 --soak-s 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
from run import (
    BenchError,
    ProcessSet,
    add_build_arg,
    free_port,
    gateway_command,
    log,
    meshgate_yaml,
    wait_ready,
)

BENCH_DIR = Path(__file__).resolve().parent
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
OPEN_BATCH = 500  # connections opened at once
IDLE_TIMEOUT_S = 3600  # the gateway must not close the idle connections during the run


async def open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections that each completed one request and now sit idle."""
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writers.append(writer)

    for start in range(0, count, OPEN_BATCH):
        await asyncio.gather(*(one() for _ in range(min(OPEN_BATCH, count - start))))
    return writers


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def soak(port: int, pid: int, duration_s: int, sample_s: int) -> list[tuple[float, float]]:
    """wrk -c64 for ``duration_s`` seconds; (seconds since start, RSS MB) samples."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk not found: apt-get install -y wrk")
    cmd = [wrk, "-t1", "-c64", f"-d{duration_s}s", f"http://127.0.0.1:{port}/"]
    proc = psutil.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr)
    start = time.monotonic()
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        samples.append((round(time.monotonic() - start, 1), round(rss_mb(pid), 2)))
        time.sleep(sample_s)
    return samples


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--soak-s", type=int, default=300)
    p.add_argument("--sample-s", type=int, default=10)
    p.add_argument("--start-timeout", type=float, default=20.0)
    add_build_arg(p)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 1000), hard))
    procs = ProcessSet()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-conns-"))
    report: dict[str, object] = {"connections": args.connections}
    try:
        up_port = free_port()
        cmd = [sys.executable, str(BENCH_DIR / "fast_upstream.py"), "--port", str(up_port)]
        upstream = procs.spawn("upstream", cmd, log_path=tmp / "upstream.log")
        wait_ready(upstream, up_port, args.start_timeout)
        port = free_port()
        cfg = tmp / "gateway.yaml"
        cfg.write_text(meshgate_yaml(port, up_port, "builtins", idle_timeout_s=IDLE_TIMEOUT_S))
        base, env = gateway_command(args.build, None)
        gw = procs.spawn(
            "meshgate",
            [*base, "gateway", "-c", str(cfg), "--workers", "1"],
            log_path=tmp / "meshgate.log",
            env=env,
        )
        wait_ready(gw, port, args.start_timeout)
        pid = gw.popen.pid
        before = rss_mb(pid)
        held, idle = asyncio.run(_hold(port, args.connections, pid))
        report["held"] = held
        report["rss_before_mb"] = round(before, 2)
        report["rss_idle_mb"] = round(idle, 2)
        report["kb_per_connection"] = round((idle - before) * 1000 / held, 2)
        if args.soak_s:
            samples = soak(port, pid, args.soak_s, args.sample_s)
            steady = [mb for t, mb in samples if t >= 60] or [mb for _, mb in samples]
            mid = (max(steady) + min(steady)) / 2
            report["soak_s"] = args.soak_s
            report["soak_rss_mb"] = samples
            report["soak_spread_percent"] = round((max(steady) - min(steady)) / 2 / mid * 100, 2)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


async def _hold(port: int, count: int, pid: int) -> tuple[int, float]:
    """Open the idle connections, read the gateway's RSS (MB), close them."""
    writers = await open_idle(port, count)
    await asyncio.sleep(1.0)  # let the gateway settle (timers, buffers)
    idle = rss_mb(pid)
    for writer in writers:
        writer.close()
    return len(writers), idle


if __name__ == "__main__":
    sys.exit(main())
