"""Sidecar hop-pair benchmark (issue 11): the latency a pair of sidecars adds, and
the throughput through them, against the app called directly and against a pair
of nginx proxies (plain HTTP) measured in the same run.

    direct      wrk -> app
    nginx-pair  wrk -> nginx -> nginx -> app                 (no TLS)
    mesh-pair   wrk -> client sidecar (local port) -> mTLS -> server sidecar -> app

Each target is measured at 1 connection (latency: p50, p99) and at --connections
(64: requests/s). The mesh (control plane + both sidecars) runs in one process
pinned to the proxy CPU, as do both nginx; the app and wrk share the other CPU.

    python bench/mesh.py [--duration 10] [--connections 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from run import (
    BENCH_DIR,
    BenchError,
    Context,
    ProcessSet,
    Result,
    add_common_args,
    collect_info,
    free_port,
    gateway_command,
    log,
    make_pinning,
    parse_wrk,
    proxy_nginx_conf,
    run_wrk,
    start_nginx,
    start_upstream,
    wait_ready,
)

TARGETS = ("direct", "nginx-pair", "mesh-pair")


def start_target(ctx: Context, target: str, app_port: int) -> int:
    """Start ``target`` in front of the app; the port wrk calls."""
    if target == "direct":
        return app_port
    if target == "nginx-pair":
        inner, outer = free_port(), free_port()
        for name, port, up in (("nginx-inner", inner, app_port), ("nginx-outer", outer, inner)):
            conf = proxy_nginx_conf(ctx.tmp / name, port, up)
            proc = start_nginx(ctx, name, conf, ctx.pinning.proxy)
            wait_ready(proc, port, ctx.args.start_timeout)
        return outer
    ports_file = ctx.tmp / "mesh-ports.json"
    cmd = [*ctx.pinning.proxy, sys.executable, str(BENCH_DIR / "mesh_stack.py")]
    cmd += ["--app-port", str(app_port), "--out", str(ports_file)]
    _, env = gateway_command(ctx.args.build, None)  # PYTHONPATH of the build
    proc = ctx.procs.spawn("mesh", cmd, log_path=ctx.tmp / "mesh.log", env=env)
    deadline = time.monotonic() + ctx.args.start_timeout
    while not ports_file.exists():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise BenchError("the mesh did not start", (ctx.tmp / "mesh.log").read_text()[-2000:])
        time.sleep(0.1)
    port = int(json.loads(ports_file.read_text())["client_local_port"])
    wait_ready(proc, port, ctx.args.start_timeout)
    return port


def measure(ctx: Context, target: str, port: int, connections: int) -> Result:
    args = ctx.args
    url = f"http://127.0.0.1:{port}/"
    if args.warmup:
        run_wrk(ctx.procs, ctx.pinning, url, args.warmup, connections, False, ())
    log(f"{target}: {args.duration}s at {connections} connection(s)")
    out = run_wrk(ctx.procs, ctx.pinning, url, args.duration, connections, True, ())
    return parse_wrk(out, Result(f"{target}@c{connections}", url))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--upstream", choices=("auto", "nginx", "python"), default="auto")
    add_common_args(p)
    args = p.parse_args(argv)
    args.middleware = "builtins"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    procs = ProcessSet()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-mesh-"))
    results: dict[str, dict[int, Result]] = {}
    try:
        pinning = make_pinning(args)
        ctx = Context(args, procs, pinning, tmp, collect_info(args, pinning))
        if ctx.info["nginx"] is None:
            raise BenchError("nginx is needed for the nginx-pair reference: apt-get install nginx")
        _, app_port = start_upstream(ctx)
        for target in TARGETS:
            port = start_target(ctx, target, app_port)
            results[target] = {c: measure(ctx, target, port, c) for c in (1, args.connections)}
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    c = args.connections
    direct = results["direct"]
    summary = {}
    for target in TARGETS[1:]:
        r1, rc = results[target][1], results[target][c]
        summary[target] = {
            "added_p50_ms_c1": round((r1.p50_ms or 0) - (direct[1].p50_ms or 0), 3),
            "added_p99_ms_c1": round((r1.p99_ms or 0) - (direct[1].p99_ms or 0), 3),
            f"rps_ratio_c{c}": round((rc.rps or 0) / (direct[c].rps or 1), 3),
        }
    if results["nginx-pair"][c].rps:
        summary["mesh-pair"]["rps_vs_nginx_pair"] = round(
            (results["mesh-pair"][c].rps or 0) / (results["nginx-pair"][c].rps or 1), 3
        )
    if args.json:
        doc = {
            "info": ctx.info,
            "results": [asdict(r) for per in results.values() for r in per.values()],
            "summary": summary,
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{'target':16} {'rps':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for per in results.values():
        for r in per.values():
            print(
                f"{r.target:16} {r.rps or 0:10.0f} {r.p50_ms or 0:8.3f} {r.p99_ms or 0:8.3f} "
                f"{r.errors:7d}"
            )
    for target, vals in summary.items():
        print(target, json.dumps(vals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
