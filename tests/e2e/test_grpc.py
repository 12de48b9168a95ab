"""gRPC through the gateway end to end: grpcio client -> meshgate (h2c, or TLS h2
listener) -> grpcio server on an h2c upstream. Generic handlers with bytes in and
out, so no protobuf code generation is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshgate.gateway import Gateway
from tests.e2e.conftest import GatewayFactory, eventually, free_port, make_config
from tests.e2e.h2_helpers import RawH2
from tests.e2e.h2_upstream import H2Upstream
from tests.e2e.test_ratelimit import away_from_boundary, window
from tests.e2e.test_tls import Pki, tls_listener

SERVICE = "test.Echo"
H2C = {"http2": True}


def ident(data: bytes) -> bytes:
    return data


class EchoService:
    """The upstream's handlers; records what it saw."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.metadata: list[dict[str, str]] = []
        self.time_remaining: list[float | None] = []
        self.fail_next = 0  # calls to answer UNAVAILABLE first
        self.endless_cancelled = asyncio.Event()
        self.serving = True  # what grpc.health.v1.Health/Check answers
        self.health_checks: list[bytes] = []  # the requests it got

    def _record(self, method: str, ctx: grpc.aio.ServicerContext) -> None:
        self.calls.append(method)
        self.metadata.append({k: str(v) for k, v in ctx.invocation_metadata() or ()})
        self.time_remaining.append(ctx.time_remaining())

    async def unary(self, req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        self._record("Unary", ctx)
        if self.fail_next:
            self.fail_next -= 1
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        if req == b"missing":
            await ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: missing")
        if req.startswith(b"sleep:"):
            await asyncio.sleep(float(req[6:]))
        await ctx.send_initial_metadata((("x-served-by", "echo"),))
        ctx.set_trailing_metadata((("x-checksum", "42"),))
        return b"echo:" + req

    async def server_stream(
        self, req: bytes, ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self._record("ServerStream", ctx)
        for i in range(int(req)):
            yield b"item-%d" % i

    async def endless(self, req: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self._record("Endless", ctx)
        try:
            i = 0
            while True:
                yield b"tick-%d" % i
                i += 1
                await asyncio.sleep(0.01)
        finally:  # cancelled (in the sleep) or closed (at the yield): it never ends else
            self.endless_cancelled.set()

    async def client_stream(
        self, requests: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext
    ) -> bytes:
        self._record("ClientStream", ctx)
        return b"+".join([r async for r in requests])

    async def bidi(
        self, requests: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self._record("Bidi", ctx)
        async for r in requests:
            yield r.upper()

    async def health_check(self, req: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        self.health_checks.append(req)
        return b"\x08\x01" if self.serving else b"\x08\x02"  # SERVING / NOT_SERVING

    def health_handler(self) -> grpc.GenericRpcHandler:
        check = grpc.unary_unary_rpc_method_handler(self.health_check, ident, ident)
        return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": check})

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary, ident, ident),
                "ServerStream": grpc.unary_stream_rpc_method_handler(
                    self.server_stream, ident, ident
                ),
                "Endless": grpc.unary_stream_rpc_method_handler(self.endless, ident, ident),
                "ClientStream": grpc.stream_unary_rpc_method_handler(
                    self.client_stream, ident, ident
                ),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, ident, ident),
            },
        )


@pytest.fixture
async def echo() -> AsyncIterator[tuple[EchoService, int]]:
    service = EchoService()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service.handler(), service.health_handler()))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield service, port
    await server.stop(None)


def grpc_config(
    port: int,
    route: dict[str, Any] | None = None,
    upstream_extra: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    upstream = {
        "name": "grpc",
        "protocol": "h2c",
        "connect_timeout_s": 1,
        "instances": [{"host": "127.0.0.1", "port": port}],
        **(upstream_extra or {}),
    }
    routes = [{"path": f"/{SERVICE}/*", "upstream": "grpc", **(route or {})}]
    top.setdefault("listener", H2C)
    return make_config(0, upstreams=[upstream], routes=routes, **top)


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[..., grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []

    def make(gw: Gateway, creds: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
        target = f"127.0.0.1:{gw.port}"
        if creds is None:
            ch = grpc.aio.insecure_channel(target)
        else:
            options = (("grpc.ssl_target_name_override", "default.test"),)
            ch = grpc.aio.secure_channel(target, creds, options=options)
        channels.append(ch)
        return ch

    yield make
    for ch in channels:
        await ch.close()


def unary(ch: grpc.aio.Channel, method: str = "Unary") -> Any:
    return ch.unary_unary(f"/{SERVICE}/{method}", ident, ident)


async def call_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_the_four_kinds_of_call(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    service, port = echo
    gw = await gateway_factory(grpc_config(port))
    ch = channel_to(gw)
    assert await unary(ch)(b"hi", timeout=5) == b"echo:hi"
    stream = ch.unary_stream(f"/{SERVICE}/ServerStream", ident, ident)
    assert [m async for m in stream(b"3", timeout=5)] == [b"item-0", b"item-1", b"item-2"]

    async def parts() -> AsyncIterator[bytes]:
        for p in (b"a", b"b", b"c"):
            yield p

    upload = ch.stream_unary(f"/{SERVICE}/ClientStream", ident, ident)
    assert await upload(parts(), timeout=5) == b"a+b+c"
    bidi = ch.stream_stream(f"/{SERVICE}/Bidi", ident, ident)
    assert [m async for m in bidi(parts(), timeout=5)] == [b"A", b"B", b"C"]
    assert service.calls == ["Unary", "ServerStream", "ClientStream", "Bidi"]


async def test_bidi_streaming_is_interactive(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    """Each message gets its answer before the next is sent: nothing waits for the
    end of the request stream."""
    _, port = echo
    gw = await gateway_factory(grpc_config(port))
    call = channel_to(gw).stream_stream(f"/{SERVICE}/Bidi", ident, ident)(timeout=5)
    for word in (b"one", b"two", b"three"):
        await call.write(word)
        assert await call.read() == word.upper()
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_client_cancel_reaches_the_upstream(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    """A client that cancels a stream cancels the upstream's handler too (the
    gateway resets its upstream stream), and the connection serves on."""
    service, port = echo
    gw = await gateway_factory(grpc_config(port))
    ch = channel_to(gw)
    call = ch.unary_stream(f"/{SERVICE}/Endless", ident, ident)(b"", timeout=10)
    assert await call.read() == b"tick-0"
    assert await call.read() == b"tick-1"
    call.cancel()
    await asyncio.wait_for(service.endless_cancelled.wait(), 5)
    assert await unary(ch)(b"after", timeout=5) == b"echo:after"
    pool = gw.runtime.clusters["grpc"].hosts[0].pool
    assert pool.connects == 1


async def test_large_messages_stream_through(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    _, port = echo
    gw = await gateway_factory(grpc_config(port, max_request_body_bytes=8 * 1024 * 1024))
    big = bytes(range(256)) * 8192  # 2 MiB: many HTTP/2 windows each way
    assert await unary(channel_to(gw))(big, timeout=10) == b"echo:" + big


async def test_status_message_and_metadata_pass_through(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    service, port = echo
    gw = await gateway_factory(grpc_config(port))
    ch = channel_to(gw)
    err = await call_error(unary(ch)(b"missing", timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "no such thing: missing"
    call = unary(ch)(b"x", timeout=5, metadata=(("x-user", "alice"), ("x-bin-bin", b"\x00\x01")))
    assert await call == b"echo:x"
    assert ("x-served-by", "echo") in tuple(await call.initial_metadata())
    assert ("x-checksum", "42") in tuple(await call.trailing_metadata())  # from trailers
    seen = service.metadata[-1]
    assert seen["x-user"] == "alice"
    assert seen["x-bin-bin"] == str(b"\x00\x01")
    assert seen["x-forwarded-for"] == "127.0.0.1"


async def test_client_deadline_reaches_the_upstream(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    service, port = echo
    gw = await gateway_factory(grpc_config(port))
    ch = channel_to(gw)
    assert await unary(ch)(b"quick", timeout=3) == b"echo:quick"
    remaining = service.time_remaining[-1]
    # grpc-timeout was forwarded (else the server would see no deadline: None)
    assert remaining is not None and 0 < remaining < 4
    err = await call_error(unary(ch)(b"sleep:5", timeout=0.3))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_grpc_timeout_shortens_the_route_timeout(gateway_factory: GatewayFactory) -> None:
    """The gateway gives up at the client's deadline (it answers DEADLINE_EXCEEDED
    itself), not at the route's 5 s. Seen through a raw HTTP/2 client, which keeps
    waiting past its own grpc-timeout, with an upstream that never answers (a gRPC
    server would end the call at the forwarded deadline itself)."""
    upstream = await H2Upstream().start()
    try:
        cfg = grpc_config(upstream.port)
        cfg["routes"][0]["path"] = "/*"
        gw = await gateway_factory(cfg)
        raw = await RawH2().connect(gw.port)
        try:
            grpc_headers = [
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("grpc-timeout", "200m"),
            ]
            raw.request(1, "/never", "POST", authority="x", extra=grpc_headers, end=False)
            raw.data(1, b"\x00\x00\x00\x00\x02hi", end=True)
            answer = await raw.answer(1)
        finally:
            await raw.close()
    finally:
        await upstream.stop()
    assert answer.status == 200
    assert answer.header("grpc-status") == "4"  # DEADLINE_EXCEEDED
    message = answer.header("grpc-message") or ""
    assert message.startswith("no response within 0.")  # what was left of 200 ms
    assert upstream.requests[0].header("grpc-timeout") == "200m"


async def test_gateway_errors_are_grpc_statuses(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    _, port = echo
    gw = await gateway_factory(grpc_config(port))
    ch = channel_to(gw)
    err = await call_error(ch.unary_unary("/other.Service/Call", ident, ident)(b"", timeout=5))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED  # 404: no route
    assert err.details() == "no route matches"
    assert "x-request-id" in dict(err.trailing_metadata() or ())

    down = await gateway_factory(grpc_config(free_port()))
    err = await call_error(unary(channel_to(down))(b"x", timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # 503: connect refused
    assert err.details().startswith("connect to 127.0.0.1:")

    slow = await gateway_factory(grpc_config(port, {"timeout_s": 0.2}))
    err = await call_error(unary(channel_to(slow))(b"sleep:3", timeout=5))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # 504
    assert err.details().startswith("no response within 0.")


async def test_rate_limited_call_is_resource_exhausted(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    _, port = echo
    await away_from_boundary()
    gw = await gateway_factory(grpc_config(port, {"rate_limits": [window("per-ip", 1, ["ip"])]}))
    ch = channel_to(gw)
    assert await unary(ch)(b"1", timeout=5) == b"echo:1"
    err = await call_error(unary(ch)(b"2", timeout=5))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # 429
    assert "retry-after" in dict(err.trailing_metadata() or ())


async def test_non_grpc_requests_keep_json_errors(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int]
) -> None:
    import httpx

    _, port = echo
    gw = await gateway_factory(grpc_config(port))
    async with httpx.AsyncClient(http1=False, http2=True) as c:
        r = await c.get(f"http://127.0.0.1:{gw.port}/nothing")
    assert r.status_code == 404 and r.json()["error"] == "no route matches"


async def test_retry_on_unavailable_before_any_byte(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    service, port = echo
    retry = {"retry": {"retry_on": ["unavailable"], "max_retries": 2}}
    gw = await gateway_factory(grpc_config(port, retry))
    service.fail_next = 2
    call = unary(channel_to(gw))(b"again", timeout=5)
    assert await call == b"echo:again"
    assert service.calls == ["Unary"] * 3  # the same request body each time
    assert ("x-meshgate-attempts", "3") in tuple(await call.initial_metadata())


async def test_no_retry_without_the_condition(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    service, port = echo
    gw = await gateway_factory(grpc_config(port, {"retry": {}}))  # default conditions
    service.fail_next = 1
    err = await call_error(unary(channel_to(gw))(b"x", timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and err.details() == "warming up"
    assert service.calls == ["Unary"]


async def test_grpc_over_the_tls_listener(
    gateway_factory: GatewayFactory,
    echo: tuple[EchoService, int],
    channel_to: Any,
    tmp_path: Path,
) -> None:
    _, port = echo
    pki = Pki(tmp_path)
    gw = await gateway_factory(grpc_config(port, listener=tls_listener(pki)))
    ca_pem = await asyncio.to_thread(Path(pki.ca.cert_file).read_bytes)
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    ch = channel_to(gw, creds)
    assert await unary(ch)(b"secure", timeout=5) == b"echo:secure"
    err = await call_error(unary(ch)(b"missing", timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_grpc_health_checks_take_a_not_serving_instance_out(
    gateway_factory: GatewayFactory, echo: tuple[EchoService, int], channel_to: Any
) -> None:
    service, port = echo
    check = {
        "type": "grpc",
        "service": "test.Echo",
        "interval_s": 0.05,
        "timeout_s": 1,
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "panic_threshold_percent": 0,
    }
    gw = await gateway_factory(grpc_config(port, upstream_extra={"health_check": check}))
    table = gw.runtime.clusters["grpc"].health
    assert table is not None
    key = f"127.0.0.1:{port}"
    await eventually(lambda: len(service.health_checks) >= 1)
    assert service.health_checks[0] == b"\x0a\x09test.Echo"  # HealthCheckRequest{service}
    assert table.healthy(key)
    ch = channel_to(gw)
    assert await unary(ch)(b"up", timeout=5) == b"echo:up"

    service.serving = False
    await eventually(lambda: not table.healthy(key))
    err = await call_error(unary(ch)(b"down", timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == "No healthy upstream instances"

    service.serving = True
    await eventually(lambda: table.healthy(key))
    assert await unary(ch)(b"back", timeout=5) == b"echo:back"
