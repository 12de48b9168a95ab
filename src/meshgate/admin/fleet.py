"""The admin API of a gateway run with ``--workers N`` (N > 1).

Each worker process serves its own `AdminApp` on a Unix socket in a private
directory (``Fleet.directory``, mode 0700). Worker 0 also serves the public admin
listener (``config.admin``) with `FleetAdminApp`, which answers from all workers:

* ``/metrics``: every worker's samples, each with a ``worker`` label (``"0"`` ..
  ``"N-1"``), plus ``meshgate_worker_up{worker}`` (0 while a worker restarts);
  sum over ``worker`` in PromQL for gateway-wide figures.
* ``/ready``: 200 only when every worker is ready.
* ``/upstreams``, ``/breakers``, ``/ratelimits``: ``{"workers": [{"worker": i, ...}]}``
  with each worker's own answer (state is per process).
* ``POST /reload`` and ``POST /drain``: sent to every worker; ``/reload`` answers 200
  only when every worker reloaded, else the first refusal with each worker's status.
* ``/healthz``, ``/config``, ``/routes``: worker 0's answer (all workers load the
  same file).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from meshgate.admin.api import AdminApp
from meshgate.http.messages import Request, Response
from meshgate.io.workers import Fleet

if TYPE_CHECKING:
    from meshgate.gateway import Gateway

log = logging.getLogger("meshgate.admin")

WORKER_TIMEOUT_S = 5.0
"""How long the public admin listener waits for one worker's answer."""


@dataclass
class _Answer:
    worker: int
    status: int  # 0: the worker did not answer
    body: bytes


class _Scraped(Collector):
    """Re-exposes the workers' samples with a ``worker`` label."""

    def __init__(self, answers: list[_Answer]) -> None:
        self._answers = answers

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "meshgate_worker_up",
            "1 when the worker answered this scrape, else 0.",
            labels=["worker"],
        )
        for answer in self._answers:
            worker = str(answer.worker)
            up.add_metric([worker], 1 if answer.status == 200 else 0)
            if answer.status != 200:
                continue
            for family in text_string_to_metric_families(answer.body.decode()):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": worker}
                    merged.add_sample(sample.name, labels, sample.value)
        yield up
        yield from families.values()


class FleetAdminApp(AdminApp):
    """The public admin listener of worker 0 (see the module)."""

    def __init__(self, gateway: Gateway, fleet: Fleet) -> None:
        super().__init__(gateway)
        self.fleet = fleet

    async def _ask(self, method: str, path: str) -> list[_Answer]:
        """``method path`` on every worker's private admin listener, in worker order."""
        asks = (self._ask_one(method, path, i) for i in range(self.fleet.size))
        return list(await asyncio.gather(*asks))

    async def _ask_one(self, method: str, path: str, index: int) -> _Answer:
        transport = httpx.AsyncHTTPTransport(uds=str(self.fleet.socket(index)))
        try:
            async with httpx.AsyncClient(transport=transport, timeout=WORKER_TIMEOUT_S) as client:
                r = await client.request(method, f"http://worker{path}")
            return _Answer(index, r.status_code, r.content)
        except httpx.HTTPError as exc:
            log.warning("admin: worker %d did not answer %s %s: %s", index, method, path, exc)
            return _Answer(index, 0, b"")

    async def metrics(self, _request: Request) -> Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Scraped(await self._ask("GET", "/metrics")))
        return Response(200, {"content-type": CONTENT_TYPE_LATEST}, generate_latest(registry))

    async def ready(self, request: Request) -> Response:
        answers = await self._ask("GET", "/ready")
        workers = [{"worker": a.worker, "status": _status(a)} for a in answers]
        if all(a.status == 200 for a in answers):
            return Response.json(200, {"status": "ready", "workers": workers})
        return Response.json(503, {"status": "not ready", "workers": workers})

    async def _per_worker(self, path: str) -> Response:
        out: list[dict[str, Any]] = []
        for a in await self._ask("GET", path):
            body = json.loads(a.body) if a.status == 200 else {"error": "no answer"}
            out.append({"worker": a.worker, **body})
        return Response.json(200, {"workers": out})

    async def upstreams(self, _request: Request) -> Response:
        return await self._per_worker("/upstreams")

    async def breakers(self, _request: Request) -> Response:
        return await self._per_worker("/breakers")

    async def ratelimits(self, _request: Request) -> Response:
        return await self._per_worker("/ratelimits")

    async def reload(self, _request: Request) -> Response:
        answers = await self._ask("POST", "/reload")
        workers = [{"worker": a.worker, "status": _status(a)} for a in answers]
        for a in answers:
            if a.status != 200:
                body = json.loads(a.body) if a.body else {"error": "worker did not answer"}
                return Response.json(a.status or 503, {**body, "workers": workers})
        first = json.loads(answers[0].body)
        return Response.json(200, {**first, "workers": workers})

    async def drain(self, _request: Request) -> Response:
        # Every worker's own /drain (this one's last: it answers this request).
        others = [i for i in range(self.fleet.size) if i != self.fleet.index]
        answers = await asyncio.gather(*(self._ask_one("POST", "/drain", i) for i in others))
        self.gateway.start_drain()
        workers = [{"worker": a.worker, "status": _status(a)} for a in answers]
        return Response.json(200, {"status": "draining", "workers": workers})


def _status(answer: _Answer) -> int | str:
    return answer.status if answer.status else "no answer"
