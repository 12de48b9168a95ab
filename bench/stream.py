"""Large-body streaming (issue 12, target 5): 1 GiB through the proxy in bounded
memory, throughput against nginx in the same run.

An nginx upstream serves a 1 GiB sparse file; curl (pinned with the upstream to the
load CPU) downloads it through nginx (1 worker, 16 x 64 KiB buffers,
``proxy_max_temp_file_size 0``: it relays through memory only, as meshgate does with
its 64 KiB reads) and through ``meshgate gateway --workers 1`` (pinned to the proxy
CPU), ``--rounds`` times interleaved. Reported: MiB/s (median), meshgate/nginx, and
meshgate's RSS before and at its highest during the transfers (sampled every 50 ms).

    python bench/stream.py [--size-mib 1024] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from run import (
    BenchError,
    Context,
    ProcessSet,
    add_common_args,
    collect_info,
    free_port,
    log,
    make_pinning,
    meshgate_command,
    meshgate_yaml,
    nginx_conf,
    start_nginx,
)

FILE_NAME = "big.bin"


def _ready(port: int, timeout_s: float) -> None:
    """Until GET /ready-probe gets any HTTP answer (nginx 404 is fine)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/x"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.stdout.strip() not in ("", "000"):
            return
        time.sleep(0.1)
    raise BenchError(f"nothing answers on port {port}")


def download(ctx: Context, port: int, size: int) -> float:
    """MiB/s of one download of the file through ``port`` (checked complete)."""
    cmd = [
        *ctx.pinning.load,
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_total}",
    ]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/{FILE_NAME}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    got, seconds = out.stdout.split()
    if int(got) != size:
        raise BenchError(f"downloaded {got} bytes of {size} through port {port}")
    return size / (1 << 20) / float(seconds)


class RssWatch:
    """The highest RSS of a process tree, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        procs = [self.proc, *self.proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--meshgate-cmd")
    add_common_args(p)
    args = p.parse_args(argv)
    args.upstream, args.connections, args.duration, args.warmup = "nginx", 1, 0, 0
    args.middleware = "builtins"
    size = args.size_mib << 20
    procs = ProcessSet()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-stream-"))
    speeds: dict[str, list[float]] = {"nginx": [], "meshgate": []}
    rss_before = rss_peak = 0
    try:
        pinning = make_pinning(args)
        ctx = Context(args, procs, pinning, tmp, collect_info(args, pinning))
        if ctx.info["nginx"] is None:
            raise BenchError("nginx is needed (upstream and reference): apt-get install nginx")
        files = tmp / "files"
        files.mkdir()
        with (files / FILE_NAME).open("wb") as f:
            f.truncate(size)  # sparse: the page cache serves zeros
        up_port = free_port()
        location = f"            root {files};\n            sendfile on;"
        start_nginx(ctx, "upstream", nginx_conf(tmp / "upstream", up_port, location), pinning.load)
        _ready(up_port, args.start_timeout)
        ng_port = free_port()
        proxy_loc = f"""\
            proxy_pass http://127.0.0.1:{up_port};
            proxy_http_version 1.1;
            proxy_max_temp_file_size 0;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_set_header Connection "";"""
        start_nginx(ctx, "proxy", nginx_conf(tmp / "proxy", ng_port, proxy_loc), pinning.proxy)
        _ready(ng_port, args.start_timeout)
        mg_port = free_port()
        cfg = tmp / "gateway.yaml"
        cfg.write_text(meshgate_yaml(mg_port, up_port, "builtins"))
        base, env = meshgate_command(args.meshgate_cmd)
        cmd = [*pinning.proxy, *base, "gateway", "-c", str(cfg), "--workers", "1"]
        mg = procs.spawn("meshgate", cmd, log_path=tmp / "meshgate.log", env=env)
        _ready(mg_port, args.start_timeout)
        watch = RssWatch(mg.popen.pid)
        rss_before = watch.rss()
        with watch:
            for number in range(args.rounds):
                order = ["nginx", "meshgate"] if number % 2 == 0 else ["meshgate", "nginx"]
                for target in order:
                    port = ng_port if target == "nginx" else mg_port
                    log(f"{target}: downloading {args.size_mib} MiB")
                    speeds[target].append(download(ctx, port, size))
        rss_peak = watch.peak
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {t: statistics.median(v) for t, v in speeds.items()}
    doc = {
        "size_mib": args.size_mib,
        "mib_per_s": med,
        "rounds": speeds,
        "meshgate_nginx_ratio": round(med["meshgate"] / med["nginx"], 3),
        "meshgate_rss_mib_before": round(rss_before / (1 << 20), 1),
        "meshgate_rss_mib_peak": round(rss_peak / (1 << 20), 1),
        "pinning": ctx.info["pinning"],
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for key, value in doc.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
