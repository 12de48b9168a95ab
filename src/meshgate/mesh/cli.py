"""``meshgate sidecar -c sidecar.yaml`` and ``meshgate mesh-demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from meshgate.cli import report_config_error
from meshgate.config.loader import ConfigError

log = logging.getLogger("meshgate.mesh")


def cmd_sidecar(args: argparse.Namespace) -> int:
    from meshgate.io.allocator import tune_malloc
    from meshgate.mesh.config import load_sidecar_config
    from meshgate.mesh.sidecar import Sidecar, SidecarError

    try:
        config = load_sidecar_config(args.config)
    except ConfigError as exc:
        return report_config_error(exc)
    log.info("%s", tune_malloc())

    async def run() -> int:
        sidecar = Sidecar(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await sidecar.start()
        except ConfigError as exc:
            return report_config_error(exc)
        except SidecarError as exc:
            log.error("sidecar cannot start: %s", exc)
            return 1
        except OSError as exc:
            log.error("sidecar cannot listen: %s", exc.strerror or exc)
            return 1
        await stop.wait()
        log.info("stopping: deregistering and draining (up to %g s)", config.drain_timeout_s)
        await sidecar.stop()
        return 0

    return _run(run)


def _run(main: Any) -> int:
    import uvloop

    return int(uvloop.run(main()))


def cmd_mesh_demo(args: argparse.Namespace) -> int:
    from meshgate.mesh.demo import run_mesh_demo

    return _run(lambda: run_mesh_demo(args.port))


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("sidecar", help="run a mesh sidecar beside a service")
    p.add_argument("-c", "--config", required=True, help="sidecar.yaml")
    p.set_defaults(func=cmd_sidecar)

    p = sub.add_parser(
        "mesh-demo",
        help="control plane, three services with sidecars and a gateway, on 127.0.0.1",
    )
    p.add_argument("--port", type=int, default=8080, help="the gateway's port")
    p.set_defaults(func=cmd_mesh_demo)
