"""Large-body streaming (issue 12, target 5): 1 GiB through the proxy in bounded
memory, throughput against nginx in the same run, both directions.

Download: an nginx upstream serves a 1 GiB sparse file; curl (pinned with the
upstream to the load CPU) downloads it through nginx (1 worker, 16 x 64 KiB buffers,
``proxy_max_temp_file_size 0``: it relays through memory only, as meshgate does with
its 64 KiB reads) and through ``meshgate gateway --workers 1`` (pinned to the proxy
CPU). Upload: curl POSTs the same file (``-T``, Content-Length known, no
``Expect: 100-continue``) through each proxy to bench/fast_upstream.py (load CPU),
which reads the whole body before it answers; nginx streams it
(``proxy_request_buffering off``, 64 KiB body buffer, no size limit), meshgate runs with
``max_request_body_bytes: null``. Each transfer ``--rounds`` times, interleaved.
Reported per direction: MiB/s (median), meshgate/nginx; and meshgate's RSS before
and at its highest during all transfers (sampled every 50 ms).

    python bench/stream.py [--size-mib 1024] [--rounds 3] [--direction both] [--json]
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
    gateway_command,
    log,
    make_pinning,
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


def transfer(ctx: Context, direction: str, port: int, path: Path) -> float:
    """MiB/s of one download or upload of ``path`` through ``port`` (checked complete:
    all bytes moved and a 200 answer)."""
    size = path.stat().st_size
    cmd = [*ctx.pinning.load, "curl", "-s", "-o", "/dev/null"]
    if direction == "download":
        cmd += ["-w", "%{size_download} %{time_total} %{http_code}"]
        url = f"http://127.0.0.1:{port}/{path.name}"
    else:
        cmd += ["-w", "%{size_upload} %{time_total} %{http_code}", "-H", "Expect:"]
        cmd += ["-X", "POST", "-T", str(path)]
        url = f"http://127.0.0.1:{port}/upload"
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=600, check=False)
    try:
        moved, seconds, status = out.stdout.split()
    except ValueError:
        raise BenchError(f"curl {direction} through port {port}: {out.stderr.strip()}") from None
    if int(moved) != size or status != "200":
        raise BenchError(f"{direction} through port {port}: {moved} of {size} bytes, {status}")
    return size / (1 << 20) / float(seconds)


def gateway_yaml(port: int, files_port: int, sink_port: int) -> str:
    """meshgate with the default built-ins: /upload to the sink, the rest to the files."""
    return f"""\
listener: {{host: 127.0.0.1, port: {port}}}
max_request_body_bytes: null
upstreams:
  - name: files
    instances: [{{host: 127.0.0.1, port: {files_port}}}]
  - name: sink
    instances: [{{host: 127.0.0.1, port: {sink_port}}}]
routes:
  - path: /upload
    upstream: sink
  - path: /*
    upstream: files
"""


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
    p.add_argument("--direction", choices=("download", "upload", "both"), default="both")
    p.add_argument("--meshgate-cmd")
    add_common_args(p)
    args = p.parse_args(argv)
    args.upstream, args.connections, args.duration, args.warmup = "nginx", 1, 0, 0
    args.middleware = "builtins"
    size = args.size_mib << 20
    procs = ProcessSet()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-stream-"))
    directions = ["download", "upload"] if args.direction == "both" else [args.direction]
    speeds = {(d, t): [] for d in directions for t in ("nginx", "meshgate")}
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
        sink_port = free_port()
        sink = [*pinning.load, sys.executable, str(Path(__file__).parent / "fast_upstream.py")]
        procs.spawn("sink", [*sink, "--port", str(sink_port)], log_path=tmp / "sink.log")
        _ready(sink_port, args.start_timeout)
        ng_port = free_port()
        proxy_loc = f"""\
            proxy_pass http://127.0.0.1:{up_port};
            proxy_http_version 1.1;
            proxy_max_temp_file_size 0;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_set_header Connection "";
        }}
        location /upload {{
            proxy_pass http://127.0.0.1:{sink_port};
            proxy_http_version 1.1;
            proxy_request_buffering off;
            client_max_body_size 0;
            client_body_buffer_size 64k;
            proxy_set_header Connection "";"""
        start_nginx(ctx, "proxy", nginx_conf(tmp / "proxy", ng_port, proxy_loc), pinning.proxy)
        _ready(ng_port, args.start_timeout)
        mg_port = free_port()
        cfg = tmp / "gateway.yaml"
        cfg.write_text(gateway_yaml(mg_port, up_port, sink_port))
        base, env = gateway_command(args.build, args.meshgate_cmd)
        cmd = [*pinning.proxy, *base, "gateway", "-c", str(cfg), "--workers", "1"]
        mg = procs.spawn("meshgate", cmd, log_path=tmp / "meshgate.log", env=env)
        _ready(mg_port, args.start_timeout)
        watch = RssWatch(mg.popen.pid)
        rss_before = watch.rss()
        transfer(ctx, "download", up_port, files / FILE_NAME)  # page cache warm for all
        with watch:
            for number in range(args.rounds):
                order = ["nginx", "meshgate"] if number % 2 == 0 else ["meshgate", "nginx"]
                for direction in directions:
                    for target in order:
                        port = ng_port if target == "nginx" else mg_port
                        log(f"{target}: {direction} of {args.size_mib} MiB")
                        speed = transfer(ctx, direction, port, files / FILE_NAME)
                        speeds[direction, target].append(speed)
        rss_peak = watch.peak
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {key: statistics.median(v) for key, v in speeds.items()}
    doc: dict[str, object] = {"size_mib": args.size_mib}
    for d in directions:
        doc[d] = {
            "mib_per_s": {t: round(med[d, t], 1) for t in ("nginx", "meshgate")},
            "rounds": {t: [round(x, 1) for x in speeds[d, t]] for t in ("nginx", "meshgate")},
            "meshgate_nginx_ratio": round(med[d, "meshgate"] / med[d, "nginx"], 3),
        }
    doc |= {
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
