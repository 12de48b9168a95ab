"""The mesh under test for bench/mesh.py: a control plane and two sidecars in one
process (pinned by the caller): ``server`` beside the app at ``--app-port``, and
``client`` (egress only) with a local port for ``server``. Writes the ports as
JSON to ``--out`` once traffic flows, then runs until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path

import uvloop

from meshgate.mesh.demo import LocalMesh

READY_TIMEOUT_S = 30.0
POLICY = ("authz", {"name": "server-from-client", "to": "server", "from": ["client"]})


async def main(app_port: int, out: Path) -> None:
    mesh = LocalMesh(trust_domain="mesh.bench")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await mesh.start([POLICY])
    try:
        server = await mesh.add_sidecar("server", {"port": 0}, app_port)
        client = await mesh.add_sidecar("client", {"port": 0, "ports": {"server": 0}})
        await client.wait_for_services({"server"}, READY_TIMEOUT_S)
        ports = {
            "client_local_port": client.local_port("server"),
            "client_outbound_port": client.outbound_port,
            "server_inbound_port": server.inbound_port,
        }
        await asyncio.to_thread(out.write_text, json.dumps(ports))
        await stop.wait()
    finally:
        await mesh.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--app-port", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log-level", default="warning")
    a = p.parse_args()
    logging.basicConfig(level=getattr(logging, a.log_level.upper()))
    uvloop.run(main(a.app_port, a.out))
