#!/usr/bin/env python3
"""In-process cost of a request, for A/B work on the hot path when wrk runs are too
noisy: the gateway and a keep-alive client share one process (uvloop), the upstream
(bench/fast_upstream.py) runs in another.

For each target (the same gateway configs as bench/run.py: meshgate, ratelimit, full,
...), ``--requests`` GETs go over ``--connections`` keep-alive connections, one at a
time on each; reported: this process's CPU µs per request (gateway + client; the
client's share is the same for every target, so differences are the gateway's),
median of ``--rounds`` interleaved rounds. ``--profile`` instead counts the Python
function calls per request (cProfile, deterministic) and prints the top functions.
``--instructions`` counts the CPU instructions per request under valgrind
(callgrind): each target runs twice, with ``--requests`` and twice as many, and the
difference divided by ``--requests`` is the cost of one request, start-up excluded.
It does not depend on what else runs on the machine (~25 s per 5,000 requests).

    python bench/inproc.py --targets meshgate,ratelimit [--requests 20000] [--rounds 5]
    python bench/inproc.py --targets ratelimit --profile
    python bench/inproc.py --targets meshgate,ratelimit --instructions --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from run import BENCH_DIR, BenchError, free_port, log, meshgate_yaml, target_headers

from meshgate.config.loader import parse_config
from meshgate.gateway import Gateway

# direct: the client straight to the upstream, no gateway (the client's own share).
TARGETS = ("direct", "meshgate", "ratelimit", "jwt", "observe", "cache", "full")


def target_yaml(target: str, port: int, upstream_port: int, tmp: Path) -> str:
    return meshgate_yaml(
        port,
        upstream_port,
        "builtins",
        "local" if target in ("ratelimit", "full") else "",
        jwt=target in ("jwt", "full"),
        access_log=tmp / "access.log" if target in ("observe", "full") else None,
        cache=target == "cache",
        cors=target == "full",
    )


def request_bytes(target: str) -> bytes:
    lines = ["GET / HTTP/1.1", "Host: 127.0.0.1", "User-Agent: inproc", *target_headers(target)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Client(asyncio.Protocol):
    """One keep-alive connection sending ``count`` requests, one at a time; each
    response is read to its Content-Length."""

    def __init__(self, request: bytes, count: int, done: asyncio.Future[None]) -> None:
        self.request = request
        self.left = count
        self.done = done
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[: end + 2]
            at = head.find(b"\r\ncontent-length:")  # meshgate sends lower-case names
            if at < 0:
                head = head.lower()
                at = head.find(b"\r\ncontent-length:")
            length = int(head[at + 17 : head.find(b"\r\n", at + 2)]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            if head[9:12] != b"200":
                self.done.set_exception(BenchError(f"answer {head[:40]!r}"))
                return
            self.buf = self.buf[end + 4 + length :]
            self.left -= 1
            if self.left == 0:
                assert self.transport is not None
                self.transport.close()
                if not self.done.done():
                    self.done.set_result(None)
                return
            assert self.transport is not None
            self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(BenchError(f"connection lost early: {exc}"))


async def drive(port: int, request: bytes, requests: int, connections: int) -> None:
    loop = asyncio.get_running_loop()
    each = requests // connections
    waits = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda d=done: Client(request, each, d), "127.0.0.1", port)
        waits.append(done)
    await asyncio.gather(*waits)


async def run_target(
    target: str, upstream_port: int, tmp: Path, args: argparse.Namespace
) -> tuple[float, cProfile.Profile | None]:
    if target == "direct":
        return await measure(target, upstream_port, args)
    port = free_port()
    config, doc = parse_config(target_yaml(target, port, upstream_port, tmp), f"{target}.yaml")
    gw = Gateway(config, doc)
    await gw.start()
    try:
        return await measure(target, port, args)
    finally:
        await gw.stop(drain_timeout_s=1)


async def measure(
    target: str, port: int, args: argparse.Namespace
) -> tuple[float, cProfile.Profile | None]:
    request = request_bytes(target)
    await drive(port, request, 2000, args.connections)  # warm-up
    profile = cProfile.Profile() if args.profile else None
    start = time.process_time()
    if profile is not None:
        profile.enable()
    await drive(port, request, args.requests, args.connections)
    if profile is not None:
        profile.disable()
    cpu_us = (time.process_time() - start) / args.requests * 1e6
    return cpu_us, profile


def instructions(target: str, requests: int) -> int:
    """Instructions this script executes for ``requests`` requests of ``target``
    (start-up included), counted by valgrind's callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise BenchError("valgrind not found: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory(prefix="meshgate-callgrind-") as tmp:
        cmd = [valgrind, "--tool=callgrind", f"--callgrind-out-file={tmp}/out"]
        cmd += [sys.executable, __file__, "--targets", target, "--rounds", "1"]
        cmd += ["--requests", str(requests)]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise BenchError(f"valgrind run of {target} failed: {out.stderr[-2000:]}")
    return int(found.group(1))


def count_instructions(targets: list[str], requests: int) -> int:
    """Print instructions per request of each target; with ``direct`` among the
    targets, also the gateway's own (the target's minus the client's, ``direct``)."""
    counts = {}
    for target in targets:
        small = instructions(target, requests)
        large = instructions(target, 2 * requests)
        counts[target] = (large - small) / requests
        log(f"{target}: {counts[target]:.0f} instructions/request")
    client = counts.get("direct", 0.0)
    first = next(t for t in targets if t != "direct") if len(targets) > 1 else targets[0]
    for target, count in counts.items():
        line = f"{target:10s} {count:10.0f} instructions/request"
        if client and target != "direct":
            own, base = count - client, counts[first] - client
            line += f"  gateway's own {own:10.0f}  {first}/{target} {base / own:.3f}"
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="meshgate,ratelimit")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="count Python calls per request")
    p.add_argument("--top", type=int, default=40, help="functions listed with --profile")
    p.add_argument("--instructions", action="store_true", help="count them under valgrind")
    args = p.parse_args(argv)
    targets = args.targets.split(",")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        p.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    if args.instructions:
        try:
            return count_instructions(targets, args.requests)
        except BenchError as exc:
            log(f"FAILED: {exc}")
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-inproc-"))
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "fast_upstream.py"), "--port", str(upstream_port)]
    )
    try:
        time.sleep(0.5)
        results: dict[str, list[float]] = {t: [] for t in targets}
        rounds = 1 if args.profile else args.rounds
        for number in range(rounds):
            order = targets if number % 2 == 0 else targets[::-1]
            for target in order:
                cpu_us, profile = uvloop.run(run_target(target, upstream_port, tmp, args))
                results[target].append(cpu_us)
                log(f"{target}: {cpu_us:.2f} CPU µs/request")
                if profile is not None:
                    stats = pstats.Stats(profile)
                    calls = stats.total_calls  # type: ignore[attr-defined]
                    print(f"== {target}: {calls / args.requests:.1f} Python calls per request")
                    stats.sort_stats("tottime").print_stats(args.top)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.profile:
        base = statistics.median(results[targets[0]])
        for target, values in results.items():
            med = statistics.median(values)
            rounds_text = ", ".join(f"{v:.2f}" for v in values)
            print(
                f"{target:10s} {med:7.2f} CPU µs/request  (rounds {rounds_text})  "
                f"{targets[0]}/{target} {base / med:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
