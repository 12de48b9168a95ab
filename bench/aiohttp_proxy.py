#!/usr/bin/env python3
"""The "aiohttp" benchmark target: a reverse proxy written the usual way with aiohttp.

One aiohttp web server (uvloop), a catch-all handler, and one shared ClientSession whose
keep-alive pool talks to the upstream: method, path, query, headers and body forwarded,
status, headers and body returned (bodies read whole: the benchmark's are 19 bytes).
Hop-by-hop fields are dropped both ways. It stands for the Python peer issue 12 compares
against (">= 5x an aiohttp reverse proxy"); it is written as a user of aiohttp would,
without tuning tricks that the meshgate engine is not allowed either.

    python bench/aiohttp_proxy.py --port 8080 --upstream-port 9000
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)
TIMEOUT_S = 30.0


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def start(app: web.Application) -> None:
        app["session"] = ClientSession(
            connector=TCPConnector(limit=0, keepalive_timeout=60),
            timeout=ClientTimeout(total=TIMEOUT_S),
            auto_decompress=False,
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def proxy(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with app["session"].request(
            request.method,
            upstream + request.rel_url.raw_path_qs,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=resp.status, headers=out, body=data)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    args = p.parse_args()
    uvloop.install()
    web.run_app(
        make_app(f"http://127.0.0.1:{args.upstream_port}"),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
