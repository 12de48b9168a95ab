"""Command line: ``meshgate gateway|validate|explain|hash-key|schema|demo|control-plane|ctl|
sidecar|mesh-demo``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from meshgate.config.loader import ConfigError, config_warnings, json_schema, load_config

GC_GEN0_THRESHOLD = 50_000


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO (JWKS fetches, the admin API asking workers).
    logging.getLogger("httpx").setLevel(logging.WARNING)


def report_config_error(exc: ConfigError) -> int:
    """Print each config problem as ``file:line: key.path: problem``; exit code 1."""
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return 1


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        config, doc = load_config(args.file)
    except ConfigError as exc:
        return report_config_error(exc)
    # Plugins are resolved too, so a bad dotted path fails validation.
    from meshgate.pipeline.runtime import build_runtime

    async def check() -> None:
        await build_runtime(config, load_config(args.file)[1]).aclose()

    try:
        asyncio.run(check())
    except ConfigError as exc:
        return report_config_error(exc)
    warnings = config_warnings(config, doc)
    for warning in warnings:
        print(warning, file=sys.stderr)
    note = f", {len(warnings)} warning(s)" if warnings else ""
    print(f"{args.file}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams{note})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from meshgate.explain import ExplainError, run_explain

    try:
        config, doc = load_config(args.config)
        lines = run_explain(config, doc, args.method, args.url, args.header or [])
    except ConfigError as exc:
        return report_config_error(exc)
    except ExplainError as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def cmd_hash_key(args: argparse.Namespace) -> int:
    """Print the stored form of an API key (``sha256:...``); with no key, make one."""
    from meshgate.auth.apikeys import hash_key, new_key

    key = args.key
    if key is None and not sys.stdin.isatty():
        key = sys.stdin.readline().strip() or None
    if key is None:
        key = new_key()
        print(f"key:  {key}")
        print(f"hash: {hash_key(key)}")
        print("Give the key to the consumer; put only the hash in gateway.yaml.", file=sys.stderr)
        return 0
    try:
        print(hash_key(key))
    except ValueError as exc:
        print(f"hash-key: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_schema(_args: argparse.Namespace) -> int:
    print(json_schema())
    return 0


async def watch_file(target: str, reload: asyncio.Event, stop: asyncio.Event) -> None:
    """Set ``reload`` whenever the file ``target`` (an absolute, resolved path) changes.

    Its folder is watched, so editors that replace the file are seen too.
    """
    from watchfiles import awatch

    async for _ in awatch(
        os.path.dirname(target),
        stop_event=stop,
        watch_filter=lambda _change, changed: changed == target,
    ):
        logging.getLogger("meshgate").info("%s changed: reloading", target)
        reload.set()


def cmd_gateway(args: argparse.Namespace) -> int:
    from meshgate.gateway import Gateway
    from meshgate.io.allocator import tune_malloc
    from meshgate.io.workers import Fleet, run_workers

    try:
        config, doc = load_config(args.config)
    except ConfigError as exc:
        return report_config_error(exc)
    workers = args.workers or os.cpu_count() or 1
    # With several workers each serves its admin API on a Unix socket in this private
    # directory and worker 0 answers the admin port for all (meshgate/admin/fleet.py).
    fleet_dir = Path(tempfile.mkdtemp(prefix="meshgate-")) if workers > 1 else None
    reservation = None
    if workers > 1 and config.listener.port == 0:
        # Every worker must bind the same port: pick it once, here.
        from meshgate.io.server import bind_socket

        reservation = bind_socket(config.listener.host, 0, reuse_port=True)
        listener = config.listener.model_copy(update={"port": reservation.getsockname()[1]})
        config = config.model_copy(update={"listener": listener})
    log = logging.getLogger("meshgate")
    log.info("%s", tune_malloc())  # before forking: the workers inherit it
    watched = os.path.realpath(args.config)

    async def serve(stop: asyncio.Event, reload: asyncio.Event, index: int) -> int:
        fleet = Fleet(index, workers, fleet_dir) if fleet_dir is not None else None
        gateway = Gateway(
            config, doc, reuse_port=workers > 1, config_path=args.config, admin=True, fleet=fleet
        )
        gateway.on_drain = stop.set  # POST /drain: drain and exit as on SIGTERM
        try:
            await gateway.start()
        except ConfigError as exc:
            return report_config_error(exc)
        except OSError as exc:
            log.error(
                "cannot listen on %s:%d: %s",
                config.listener.host,
                config.listener.port,
                exc.strerror or exc,
            )
            return 1
        # Requests create no reference cycles, so young-generation scans only
        # walk live in-flight objects: scan less often, and never the startup ones.
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
        watcher = asyncio.create_task(watch_file(watched, reload, stop)) if args.watch else None
        while not stop.is_set():
            reload_wait = asyncio.ensure_future(reload.wait())
            stop_wait = asyncio.ensure_future(stop.wait())
            await asyncio.wait({reload_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            reload_wait.cancel()
            stop_wait.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                try:
                    await gateway.reload_from_file()
                except ConfigError as exc:
                    log.error("reload refused, keeping the running config:\n%s", exc)
        # SIGTERM/SIGINT or POST /drain: /ready answers 503 and the listener closes now.
        gateway.start_drain()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        log.info("draining (up to %g s)", gateway.config.drain_timeout_s)
        await gateway.stop()
        log.info("stopped")
        return 0

    try:
        return run_workers(serve, workers)
    finally:
        if reservation is not None:
            reservation.close()
        if fleet_dir is not None:
            shutil.rmtree(fleet_dir, ignore_errors=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from meshgate.demo import run_demo

    return run_demo(print_config=args.print_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshgate", description="API gateway and service mesh")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("gateway", help="run the gateway")
    p.add_argument("-c", "--config", required=True, help="gateway.yaml")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes sharing the port (default: number of cores)",
    )
    p.add_argument(
        "--watch", action="store_true", help="reload when the config file changes (as SIGHUP)"
    )
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("validate", help="check a config file")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "explain", help="show how one request would be routed, without sending traffic"
    )
    p.add_argument("-c", "--config", required=True, help="gateway.yaml")
    p.add_argument("method", help="GET, POST, ...")
    p.add_argument("url", help="http://host/path?query or /path?query")
    p.add_argument(
        "-H", "--header", action="append", metavar="'NAME: VALUE'", help="a request header"
    )
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "hash-key",
        help="hash an API key for auth.api_keys (from the argument or stdin); none: make one",
    )
    p.add_argument("key", nargs="?", help="the key (better: pipe it on stdin)")
    p.set_defaults(func=cmd_hash_key)

    p = sub.add_parser("schema", help="print the JSON Schema of gateway.yaml")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("demo", help="gateway on 127.0.0.1:8080 in front of demo services")
    p.add_argument("--print-config", action="store_true", help="print the demo config and exit")
    p.set_defaults(func=cmd_demo)

    from meshgate.control.cli import add_parsers as add_control_parsers

    add_control_parsers(sub)  # control-plane, ctl
    from meshgate.mesh.cli import add_parsers as add_mesh_parsers

    add_mesh_parsers(sub)  # sidecar, mesh-demo
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Plugins are named by dotted path: find them in the current directory too,
    # as `python -m meshgate` would.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    _configure_logging(args.log_level)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
