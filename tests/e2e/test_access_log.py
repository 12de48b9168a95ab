"""Access log end to end: JSON lines for known traffic, destinations, fields, flush on stop."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshgate.config.loader import ConfigError, parse_config
from meshgate.config.models import ACCESS_LOG_FIELDS
from meshgate.gateway import Gateway
from meshgate.observability import accesslog
from tests.e2e.conftest import TestUpstream, free_port, make_config, to_yaml, url

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def start(cfg: dict[str, Any]) -> Gateway:
    config, doc = parse_config(to_yaml(cfg), "e2e.yaml")
    gw = Gateway(config, doc)
    await gw.start()
    return gw


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["request_id"]: line for line in lines}


def traffic_config(upstream: TestUpstream, log_path: Path, dead: int) -> dict[str, Any]:
    live = {"host": "127.0.0.1", "port": upstream.port}
    down = {"host": "127.0.0.1", "port": dead}
    return make_config(
        upstream.port,
        upstreams=[
            {"name": "main", "connect_timeout_s": 1, "instances": [live]},
            {"name": "down", "connect_timeout_s": 1, "instances": [down]},
            {"name": "mixed", "connect_timeout_s": 1, "instances": [down, live]},
        ],
        routes=[
            {
                "name": "api",
                "path_prefix": "/api",
                "upstream": "main",
                "rewrite": {"strip_prefix": "/api"},
            },
            {
                "name": "bad",
                "path_prefix": "/bad",
                "upstream": "main",
                "rewrite": {"strip_prefix": "/bad"},
                "retry": {"max_retries": 0},
            },
            {
                "name": "down",
                "path_prefix": "/down",
                "upstream": "down",
                "retry": {"max_retries": 0},
            },
            {
                "name": "retry",
                "path_prefix": "/retry",
                "upstream": "mixed",
                "retry": {"max_retries": 1, "backoff_base_s": 0.001, "backoff_max_s": 0.002},
            },
        ],
        access_log={"enabled": True, "path": str(log_path)},
    )


async def test_lines_for_known_traffic(upstream: TestUpstream, tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    dead = free_port()
    gw = await start(traffic_config(upstream, log_path, dead))
    live_key = f"127.0.0.1:{upstream.port}"
    dead_key = f"127.0.0.1:{dead}"
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            r_ok = await c.get(
                url(gw, "/api/big?n=5000&mode=length"), headers={"x-request-id": "ok"}
            )
            r_post = await c.post(
                url(gw, "/api/echo"), content=b"x" * 1234, headers={"x-request-id": "post"}
            )
            r_404 = await c.get(url(gw, "/nowhere"), headers={"x-request-id": "nf"})
            r_502 = await c.get(
                url(gw, "/bad/reset?when=before&how=rst"), headers={"x-request-id": "bad"}
            )
            r_down = await c.get(url(gw, "/down/x"), headers={"x-request-id": "down"})
            retried = []
            # round robin over [dead, live]: each request meets the dead instance first and
            # its retry takes the next turn (the live one)
            for i in range(2):
                r = await c.get(url(gw, f"/retry/{i}"), headers={"x-request-id": f"re{i}"})
                retried.append(r)
    finally:
        await gw.stop(drain_timeout_s=1)
    assert (r_ok.status_code, len(r_ok.content)) == (200, 5000)
    assert (r_post.status_code, r_post.content) == (200, b"x" * 1234)
    assert r_404.status_code == 404
    assert r_502.status_code == 502
    assert r_down.status_code == 503  # connection refused: the seed's 503
    assert [r.status_code for r in retried] == [200, 200]

    lines = read_lines(log_path)
    assert len(lines) == 7
    for line in lines:
        assert list(line) == list(ACCESS_LOG_FIELDS)  # every field, in the default order
        assert TIME.fullmatch(line["time"])
        assert line["client_ip"] == "127.0.0.1"
        assert isinstance(line["duration_ms"], float) and 0 <= line["duration_ms"] < 5000
    lines_by_id = by_id(lines)

    ok = lines_by_id["ok"]
    assert {k: ok[k] for k in ("method", "path", "route", "status", "bytes_in", "bytes_out")} == {
        "method": "GET",
        "path": "/api/big",  # as received: before the rewrite, without the query
        "route": "api",
        "status": 200,
        "bytes_in": 0,
        "bytes_out": 5000,
    }
    assert (ok["upstream"], ok["attempts"]) == (live_key, 1)
    assert 0 <= ok["upstream_ms"] <= ok["duration_ms"]

    post = lines_by_id["post"]
    assert (post["method"], post["path"], post["status"]) == ("POST", "/api/echo", 200)
    assert (post["bytes_in"], post["bytes_out"]) == (1234, 1234)

    nf = lines_by_id["nf"]
    assert (nf["route"], nf["status"], nf["upstream"], nf["upstream_ms"], nf["attempts"]) == (
        None,
        404,
        None,
        None,
        0,
    )
    assert nf["bytes_out"] == len(r_404.content)

    bad = lines_by_id["bad"]
    assert (bad["route"], bad["status"], bad["upstream"], bad["attempts"]) == (
        "bad",
        502,
        live_key,
        1,
    )
    assert bad["bytes_out"] == len(r_502.content)
    assert bad["upstream_ms"] is not None

    down = lines_by_id["down"]
    assert (down["route"], down["status"], down["upstream"], down["attempts"]) == (
        "down",
        503,
        dead_key,
        1,
    )
    assert down["bytes_out"] == len(r_down.content)

    re_lines = [lines_by_id["re0"], lines_by_id["re1"]]
    assert [line["attempts"] for line in re_lines] == [2, 2]
    for line, resp in zip(re_lines, retried, strict=True):
        assert (line["route"], line["status"], line["upstream"]) == ("retry", 200, live_key)
        assert line["attempts"] == int(resp.headers.get("x-meshgate-attempts", "1"))


async def test_field_subset_to_stdout(
    upstream: TestUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_config(
        upstream.port, access_log={"enabled": True, "fields": ["status", "path", "request_id"]}
    )
    gw = await start(cfg)
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            await c.get(url(gw, "/a"), headers={"x-request-id": "one"})
            await c.get(url(gw, "/b"), headers={"x-request-id": "two"})
    finally:
        await gw.stop(drain_timeout_s=1)
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == [
        {"status": 200, "path": "/a", "request_id": "one"},
        {"status": 200, "path": "/b", "request_id": "two"},
    ]
    assert [list(line) for line in out] == [["status", "path", "request_id"]] * 2


async def test_disabled_by_default_writes_nothing(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gateway.app is not None and gateway.app.access_log is None
    async with httpx.AsyncClient(timeout=10) as c:
        assert (await c.get(url(gateway, "/x"))).status_code == 200
    assert capsys.readouterr().out == ""


def test_unknown_field_is_a_located_config_error() -> None:
    text = "access_log:\n  enabled: true\n  fields:\n    - status\n    - bogus\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.yaml")
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.key) == ("gw.yaml", 5, "access_log.fields[1]")
    assert problem.message.startswith("Input should be 'time', 'request_id'")


def test_duplicate_field_is_a_config_error() -> None:
    text = "access_log:\n  fields: [status, path, status]\n"
    with pytest.raises(ConfigError, match=r"gw.yaml:2: access_log.fields: .*duplicate"):
        parse_config(text, "gw.yaml")


async def test_lines_are_flushed_on_stop(
    upstream: TestUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accesslog, "FLUSH_INTERVAL_S", 60.0)  # only a wake-up writes
    log_path = tmp_path / "access.log"
    gw = await start(
        make_config(upstream.port, access_log={"enabled": True, "path": str(log_path)})
    )
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            for i in range(40):
                assert (await c.get(url(gw, f"/n{i}"))).status_code == 200
        await asyncio.sleep(0.1)
        assert log_path.read_text() == ""  # 40 < half of buffer_lines: still queued
    finally:
        await gw.stop(drain_timeout_s=1)
    lines = read_lines(log_path)
    assert [line["path"] for line in lines] == [f"/n{i}" for i in range(40)]


async def test_full_queue_drops_and_counts(
    upstream: TestUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accesslog, "FLUSH_INTERVAL_S", 60.0)
    monkeypatch.setattr(accesslog.AccessLog, "_flush", lambda self: None)  # writer stalls
    log_path = tmp_path / "access.log"
    cfg = make_config(
        upstream.port, access_log={"enabled": True, "path": str(log_path), "buffer_lines": 4}
    )
    gw = await start(cfg)
    assert gw.app is not None
    alog = gw.app.access_log
    assert alog is not None
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            for i in range(10):
                assert (await c.get(url(gw, f"/d{i}"))).status_code == 200
        assert alog.dropped == 6  # never blocked: served all 10, queued 4
    finally:
        await gw.stop(drain_timeout_s=1)


async def test_client_gone_before_the_answer_is_logged_as_aborted(
    upstream: TestUpstream, tmp_path: Path
) -> None:
    log_path = tmp_path / "access.log"
    gw = await start(
        make_config(upstream.port, access_log={"enabled": True, "path": str(log_path)})
    )
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /slow?s=2 HTTP/1.1\r\nHost: x\r\nx-request-id: gone\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        await asyncio.sleep(0.3)
    finally:
        await gw.stop(drain_timeout_s=1)
    (line,) = read_lines(log_path)
    assert (line["request_id"], line["path"], line["status"], line["bytes_out"]) == (
        "gone",
        "/slow",
        499,
        0,
    )
    assert line["aborted"] is True
    assert line["upstream"] == f"127.0.0.1:{upstream.port}"
