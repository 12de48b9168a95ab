"""`meshgate demo`: three small services and a gateway in front of them, one command.

Services (127.0.0.1): users-1 :9101, users-2 :9102, cart :9201, orders :9301.
Gateway: 127.0.0.1:8080 with ``examples/demo.yaml``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from meshgate.config.loader import parse_config
from meshgate.config.models import ListenerConfig
from meshgate.http.errors import BodyTooLarge
from meshgate.http.messages import Request, Response
from meshgate.io.server import HttpServer

log = logging.getLogger("meshgate.demo")

DEMO_CONFIG = resources.files("meshgate").joinpath("examples/demo.yaml")
MAX_DEMO_BODY = 64 * 1024

App = Callable[[Request], Awaitable[Response]]


def users_service(instance: str) -> App:
    async def app(request: Request) -> Response:
        user_id = request.path.rstrip("/").rsplit("/", 1)[-1]
        return Response.json(200, {"id": user_id, "name": f"user-{user_id}", "instance": instance})

    return app


class _BadBody(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.response = Response.json(400, {"error": f"invalid JSON body: {detail}"})


async def _json_body(request: Request) -> Any:
    """The JSON request body ({} when empty); `_BadBody` carries the 400 to answer."""
    try:
        raw = await request.body.read_all(MAX_DEMO_BODY)
        return json.loads(raw) if raw.strip() else {}
    except (ValueError, BodyTooLarge) as exc:
        raise _BadBody(str(exc)) from None


def cart_service() -> App:
    items: list[Any] = []

    async def app(request: Request) -> Response:
        if request.method == "POST":
            try:
                item = await _json_body(request)
            except _BadBody as bad:
                return bad.response
            items.append(item)
            return Response.json(201, {"items": items, "instance": "cart-1"})
        return Response.json(200, {"items": items, "path": request.path, "instance": "cart-1"})

    return app


def orders_service() -> App:
    orders: list[dict[str, Any]] = []

    async def app(request: Request) -> Response:
        if request.method == "POST":
            try:
                data = await _json_body(request)
            except _BadBody as bad:
                return bad.response
            order = {"id": len(orders) + 1, "order": data}
            orders.append(order)
            return Response.json(201, order)
        return Response.json(200, {"orders": orders, "instance": "orders-1"})

    return app


DEMO_SERVICES: list[tuple[str, int, Callable[[], App]]] = [
    ("users-1", 9101, lambda: users_service("users-1")),
    ("users-2", 9102, lambda: users_service("users-2")),
    ("cart-1", 9201, cart_service),
    ("orders-1", 9301, orders_service),
]


async def start_demo_services(host: str = "127.0.0.1") -> list[HttpServer]:
    servers = []
    for name, port, factory in DEMO_SERVICES:
        server = HttpServer(factory(), ListenerConfig(host=host, port=port), MAX_DEMO_BODY)
        await server.start()
        log.info("demo service %s on %s:%d", name, host, port)
        servers.append(server)
    return servers


def run_demo(*, print_config: bool = False) -> int:
    from meshgate.gateway import Gateway
    from meshgate.io.workers import run_in_loop

    text = DEMO_CONFIG.read_text(encoding="utf-8")
    if print_config:
        print(text, end="")
        return 0
    config, doc = parse_config(text, "examples/demo.yaml")

    async def serve(stop: asyncio.Event, _reload: asyncio.Event, _index: int) -> int:
        services = await start_demo_services()
        gateway = Gateway(config, doc)
        await gateway.start()
        port = gateway.port
        print(
            f"meshgate demo: gateway on http://127.0.0.1:{port} (config: examples/demo.yaml)\n"
            f"  curl http://127.0.0.1:{port}/api/v1/users/42\n"
            f'  curl -X POST -d \'{{"sku":"book"}}\' http://127.0.0.1:{port}/api/v1/cart/items\n'
            f"  curl -X POST -d '{{\"total\":12}}' http://127.0.0.1:{port}/api/v1/orders\n"
            "Ctrl-C to stop.",
            flush=True,
        )
        await stop.wait()
        await gateway.stop(drain_timeout_s=5)
        for server in services:
            await server.shutdown(1)
        return 0

    return run_in_loop(serve)
