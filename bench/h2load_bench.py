"""HTTP/2 benchmark (issue 13): h2load through meshgate's TLS h2 listener and
through nginx's (``listen ssl http2``), both 1 worker pinned to the proxy CPU,
proxying to the same HTTP/1.1 upstream (nginx ``return 200``) on the load CPU,
``--rounds`` times interleaved. A self-signed ECDSA P-256 certificate is made in
the temporary directory (h2load does not verify it).

    python bench/h2load_bench.py [--requests 200000] [--clients 16] [--streams 10] [--rounds 3]

(Not bench/h2.py: run from bench/, that name would shadow the h2 package for the
gateway, which puts its working directory on sys.path for plugins.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
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
    start_upstream,
)


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bench.local")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def h2load(ctx: Context, port: int, args: argparse.Namespace) -> float:
    """Requests/s of one h2load run (every request must succeed)."""
    cmd = [*ctx.pinning.load, "h2load", "-n", str(args.requests), "-c", str(args.clients)]
    cmd += ["-m", str(args.streams), "-t", "1", f"https://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if done is None or rps is None or done.group(1) != done.group(2):
        raise BenchError(f"h2load failed or had failures on port {port}:\n{out[-1500:]}")
    return float(rps.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--streams", type=int, default=10, help="max concurrent streams per client")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--meshgate-cmd")
    add_common_args(p)
    args = p.parse_args(argv)
    args.upstream, args.connections, args.duration, args.warmup = "auto", 0, 0, 0
    args.middleware = "builtins"
    if shutil.which("h2load") is None:
        log("h2load not found: apt-get install -y nghttp2-client")
        return 2
    procs = ProcessSet()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-h2-"))
    rps: dict[str, list[float]] = {"nginx": [], "meshgate": []}
    try:
        pinning = make_pinning(args)
        ctx = Context(args, procs, pinning, tmp, collect_info(args, pinning))
        if ctx.info["nginx"] is None:
            raise BenchError("nginx is needed for the reference: apt-get install nginx")
        cert, key = self_signed(tmp)
        _, up_port = start_upstream(ctx)
        ng_port = free_port()
        proxy_loc = """\
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""
        upstream_block = f"""\
    upstream u {{
        server 127.0.0.1:{up_port};
        keepalive 64;
    }}
"""
        conf = nginx_conf(tmp / "proxy", ng_port, proxy_loc, upstream_block)
        conf = conf.replace(
            f"listen 127.0.0.1:{ng_port} backlog=4096;",
            f"listen 127.0.0.1:{ng_port} ssl http2 backlog=4096;\n"
            f"        ssl_certificate {cert};\n        ssl_certificate_key {key};",
        )
        start_nginx(ctx, "proxy", conf, pinning.proxy)
        mg_port = free_port()
        cfg = tmp / "gateway.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "listener": {
                        "host": "127.0.0.1",
                        "port": mg_port,
                        "tls": {"certificates": [{"cert_file": str(cert), "key_file": str(key)}]},
                    },
                    "upstreams": [
                        {"name": "u", "instances": [{"host": "127.0.0.1", "port": up_port}]}
                    ],
                    "routes": [{"path": "/*", "upstream": "u"}],
                }
            )
        )
        base, env = gateway_command(args.build, args.meshgate_cmd)
        cmd = [*pinning.proxy, *base, "gateway", "-c", str(cfg), "--workers", "1"]
        procs.spawn("meshgate", cmd, log_path=tmp / "meshgate.log", env=env)
        warm = argparse.Namespace(**{**vars(args), "requests": 2000})
        for port in (ng_port, mg_port):  # both ready and warm
            deadline = time.monotonic() + args.start_timeout
            while True:
                try:
                    h2load(ctx, port, warm)
                    break
                except BenchError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        for number in range(args.rounds):
            order = ["nginx", "meshgate"] if number % 2 == 0 else ["meshgate", "nginx"]
            for target in order:
                log(f"{target}: h2load {args.requests} requests")
                rps[target].append(h2load(ctx, ng_port if target == "nginx" else mg_port, args))
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {t: statistics.median(v) for t, v in rps.items()}
    doc = {
        "rps": med,
        "rounds": rps,
        "meshgate_nginx_ratio": round(med["meshgate"] / med["nginx"], 3),
        "clients": args.clients,
        "streams": args.streams,
        "pinning": ctx.info["pinning"],
    }
    print(
        json.dumps(doc, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in doc.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
