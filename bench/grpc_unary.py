"""gRPC unary throughput: a grpcio client calling a grpcio server directly, then
through meshgate (h2c listener -> ``protocol: h2c`` upstream), in one run.

    python bench/grpc_unary.py                      # 5 s each, 32 calls in flight
    python bench/grpc_unary.py --duration 10 --concurrency 64 --payload 1024
    python bench/grpc_unary.py --json

The server (``--serve``, this file in a subprocess) and the client share the load
CPU; meshgate (``--workers 1``) gets the proxy CPU, as bench/run.py pins wrk and
the upstream against the proxy (``taskset``; ``--no-pin`` to skip). The client is
grpcio's asyncio API in one process: the direct figure is also the client's own
ceiling, so the ratio says how much of it the gateway keeps, not meshgate's limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
METHOD = "/bench.Echo/Unary"


def ident(data: bytes) -> bytes:
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(port: int) -> None:
    async def unary(req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        return req

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def wait_serving(port: int, timeout_s: float) -> None:
    """Until a unary call on ``port`` succeeds."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(METHOD, ident, ident)
        while True:
            try:
                await call(b"ping", timeout=1)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def measure(port: int, duration_s: float, concurrency: int, payload: bytes) -> dict:
    """Calls completed per second with ``concurrency`` calls in flight on one channel."""
    done = 0
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(METHOD, ident, ident)
        for _ in range(200):  # warm-up: connections, the gateway's pool
            await call(payload, timeout=5)
        stop = time.monotonic() + duration_s

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < stop:
                try:
                    await call(payload, timeout=5)
                    done += 1
                except grpc.aio.AioRpcError:
                    errors += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"rps": done / elapsed, "calls": done, "errors": errors}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(cmd: list[str], cpu: int | None) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu), *cmd] if cpu is not None and taskset else cmd


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--payload", type=int, default=100, help="request bytes")
    p.add_argument("--proxy-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--py-spy",
        metavar="FILE",
        help="record meshgate with py-spy during its run (collapsed stacks to FILE)",
    )
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    allowed = os.sched_getaffinity(0)
    pinned = (
        not args.no_pin
        and shutil.which("taskset") is not None
        and args.proxy_cpu != args.load_cpu
        and {args.proxy_cpu, args.load_cpu} <= allowed
    )
    proxy_cpu = args.proxy_cpu if pinned else None
    load_cpu = args.load_cpu if pinned else None
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    env = dict(os.environ)
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    upstream_port, gateway_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gateway.yaml"
        cfg.write_text(
            f"""\
listener: {{host: 127.0.0.1, port: {gateway_port}, http2: true}}
admin: {{enabled: false}}
upstreams:
  - name: echo
    protocol: h2c
    instances: [{{host: 127.0.0.1, port: {upstream_port}}}]
routes:
  - {{path: /bench.Echo/*, upstream: echo, middleware: []}}
"""
        )
        log = (Path(tmp) / "meshgate.log").open("wb")
        try:
            server_cmd = [sys.executable, __file__, "--serve", str(upstream_port)]
            procs.append(subprocess.Popen(pin(server_cmd, load_cpu)))
            gateway_cmd = [sys.executable, "-m", "meshgate", "gateway", "-c", str(cfg)]
            gateway_cmd += ["--workers", "1"]
            procs.append(
                subprocess.Popen(pin(gateway_cmd, proxy_cpu), env=env, stdout=log, stderr=log)
            )
            payload = b"x" * args.payload
            results = {}
            gateway = procs[-1]
            for name, port in (("direct", upstream_port), ("meshgate", gateway_port)):
                asyncio.run(wait_serving(port, 20))
                cpu_before = cpu_seconds(gateway.pid)
                spy = None
                if args.py_spy and name == "meshgate":
                    spy_cmd = ["py-spy", "record", "-p", str(gateway.pid), "-f", "raw"]
                    spy_cmd += ["-d", str(int(args.duration) + 1), "-o", args.py_spy]
                    spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL)
                results[name] = asyncio.run(measure(port, args.duration, args.concurrency, payload))
                if spy is not None:
                    spy.wait(30)
                # meshgate's CPU share: calls per proxy CPU-second estimate its own
                # ceiling while the client is the bottleneck
                results[name]["proxy_cpu"] = (cpu_seconds(gateway.pid) - cpu_before) / args.duration
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
    ratio = results["meshgate"]["rps"] / results["direct"]["rps"]
    info = {
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "payload_bytes": args.payload,
        "pinning": f"proxy CPU {proxy_cpu}, load CPU {load_cpu}" if pinned else "unpinned",
        "results": results,
        "meshgate/direct": round(ratio, 3),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"gRPC unary, {args.concurrency} in flight, {args.payload} B, {info['pinning']}")
    print(f"{'target':<10} {'calls/s':>10} {'calls':>8} {'errors':>7}")
    for name, r in results.items():
        print(f"{name:<10} {r['rps']:>10.0f} {r['calls']:>8} {r['errors']:>7}")
    busy = results["meshgate"]["proxy_cpu"]
    print(f"meshgate/direct: {ratio:.2f}; meshgate CPU busy {busy:.0%}", end="")
    if busy > 0:
        print(f" -> about {results['meshgate']['rps'] / busy:.0f} calls per proxy CPU-second")
    else:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
