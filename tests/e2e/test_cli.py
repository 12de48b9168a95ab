"""The `meshgate` command line: validate, schema, gateway start errors and the demo."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import (
    REPO_ROOT,
    curl,
    eventually,
    make_config,
    run_cmd,
    subprocess_env,
    to_yaml,
)

MESHGATE = [sys.executable, "-m", "meshgate"]
DEMO_PORTS = {"gateway": 8080, "users-1": 9101, "users-2": 9102, "cart": 9201, "orders": 9301}

GOOD = """\
listener:
  host: 127.0.0.1
  port: 0
upstreams:
  - name: users
    instances:
      - {host: 127.0.0.1, port: 9101}
routes:
  - path: /api/users/:id
    methods: [GET]
    upstream: users
  - path: /api/*
    upstream: users
    middleware:
      - request_id
      - name: tests.e2e.plugins_for_tests:add_header
        config: {name: x-team, value: core}
"""


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the file")


def problems(stderr: str, path: Path) -> list[tuple[int, str, str]]:
    """Parse ``file:line: key.path: problem`` lines (every stderr line must match)."""
    out = []
    pattern = re.compile(rf"^{re.escape(str(path))}:(\d+): ([^:]+): (.+)$")
    for line in stderr.strip().splitlines():
        m = pattern.match(line)
        assert m, f"not a 'file:line: key.path: problem' line: {line!r}"
        out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


async def validate(path: Path) -> tuple[int, str, str]:
    return await run_cmd(*MESHGATE, "validate", str(path))


async def test_validate_good_file_exits_0(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    code, out, err = await validate(path)
    assert code == 0, err
    assert out.strip() == f"{path}: ok (2 routes, 1 upstreams)"
    assert err == ""


async def test_validate_the_shipped_demo_config():
    path = REPO_ROOT / "src" / "meshgate" / "examples" / "demo.yaml"
    code, out, err = await validate(path)
    assert code == 0, err
    assert "ok (3 routes, 3 upstreams)" in out


async def test_validate_installed_console_script(tmp_path):
    script = shutil.which("meshgate")
    assert script, "the meshgate console script is not installed"
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("  port: 0", "  port: 0\n  colour: blue"))
    code, _, err = await run_cmd(script, "validate", str(path))
    assert code == 1
    assert problems(err, path) == [(4, "listener.colour", "unknown key")]


@pytest.mark.parametrize(
    ("edit", "needle", "key", "message"),
    [
        (
            ("  port: 0", "  port: 0\n  bogus_key: 1"),
            "bogus_key",
            "listener.bogus_key",
            "unknown key",
        ),
        (
            ("  port: 0", "  port: 99999"),
            "port: 99999",
            "listener.port",
            "less than or equal to 65535",
        ),
        (("  port: 0", "  port: http"), "port: http", "listener.port", "valid integer"),
        (
            ("    upstream: users\n    middleware", "    upstream: nope\n    middleware"),
            "upstream: nope",
            "routes[1].upstream",
            "unknown upstream 'nope'; defined: users",
        ),
        (
            ("tests.e2e.plugins_for_tests:add_header", "no_such_pkg.plugins:add_header"),
            "no_such_pkg",
            "routes[1].middleware[1].name",
            "cannot import module 'no_such_pkg",
        ),
        (
            ("tests.e2e.plugins_for_tests:add_header", "tests.e2e.plugins_for_tests:missing"),
            "plugins_for_tests:missing",
            "routes[1].middleware[1].name",
            "has no attribute",
        ),
        (
            ("{name: x-team, value: core}", "{name: x-team}"),
            "{name: x-team}",
            "routes[1].middleware[1].config.value",
            "Field required",
        ),
        (
            ("methods: [GET]", "methods: [FETCH]"),
            "FETCH",
            "routes[0].methods",
            "unknown HTTP method 'FETCH'",
        ),
        (
            ("path: /api/users/:id", "path: api/users"),
            "path: api/users",
            "routes[0].path",
            "must start with '/'",
        ),
    ],
    ids=[
        "unknown-key",
        "port-too-big",
        "port-not-int",
        "unknown-upstream",
        "bad-plugin-module",
        "bad-plugin-attribute",
        "bad-plugin-config",
        "bad-method",
        "bad-path",
    ],
)
async def test_validate_reports_file_line_key_problem(tmp_path, edit, needle, key, message):
    text = GOOD.replace(*edit)
    assert text != GOOD
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = await validate(path)
    assert code == 1
    assert "ok" not in out
    found = problems(err, path)
    assert len(found) == 1, found
    line, got_key, problem = found[0]
    assert got_key == key
    assert message in problem
    assert line == line_of(text, needle)


async def test_validate_lists_every_problem_of_a_phase(tmp_path):
    text = GOOD.replace("  port: 0", "  port: -1\n  bogus: 1\n  backlog: 0")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = await validate(path)
    assert code == 1
    keys = {key: line for line, key, _ in problems(err, path)}
    assert keys == {
        "listener.port": line_of(text, "port: -1"),
        "listener.bogus": line_of(text, "bogus: 1"),
        "listener.backlog": line_of(text, "backlog: 0"),
    }


async def test_validate_yaml_syntax_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("listener:\n  port: [1, 2\nroutes: []\n")
    code, _, err = await validate(path)
    assert code == 1
    [(line, key, _)] = problems(err, path)
    assert key == "(yaml)"
    assert line >= 2


async def test_validate_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    code, _, err = await validate(path)
    assert code == 1
    assert str(path) in err


async def test_gateway_refuses_to_start_on_a_bad_config(tmp_path):
    path = tmp_path / "bad.yaml"
    text = to_yaml(make_config(1, routes=[{"path": "/x", "upstream": "ghost"}]))
    path.write_text(text)
    code, _, err = await run_cmd(*MESHGATE, "gateway", "-c", str(path), "--workers", "1")
    assert code == 1
    assert f"{path}:{line_of(text, 'upstream: ghost')}: routes[0].upstream: unknown upstream" in err


async def test_schema_is_json_schema_with_routes():
    code, out, err = await run_cmd(*MESHGATE, "schema")
    assert code == 0, err
    schema = json.loads(out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    props = schema["properties"]
    assert {"routes", "upstreams", "listener", "middleware", "timeout_s"} <= set(props)
    assert schema.get("additionalProperties") is False
    listener = schema["$defs"]["ListenerConfig"]["properties"]
    assert listener["port"]["maximum"] == 65535
    assert "header_timeout_s" in listener


async def test_demo_print_config_matches_the_shipped_file():
    code, out, err = await run_cmd(*MESHGATE, "demo", "--print-config")
    assert code == 0, err
    shipped = (REPO_ROOT / "src" / "meshgate" / "examples" / "demo.yaml").read_text()
    assert out == shipped
    assert yaml.safe_load(out)["listener"]["port"] == 8080


async def _port_in_use(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, TimeoutError):
        return False
    writer.transport.abort()
    return True


async def test_demo_serves_and_stops_on_sigint(tmp_path):
    busy = [f"{name} :{port}" for name, port in DEMO_PORTS.items() if await _port_in_use(port)]
    if busy:
        pytest.fail(f"meshgate demo needs these ports but they are in use: {', '.join(busy)}")
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *MESHGATE,
            "demo",
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env=subprocess_env(),
            cwd=str(tmp_path),
        )
    try:
        try:
            await eventually(lambda: _port_in_use(8080), wait_s=20)
        except AssertionError:
            raise AssertionError(f"demo did not listen on 8080:\n{log_path.read_text()}") from None
        base = "http://127.0.0.1:8080"
        instances = []
        for _ in range(4):
            code, out, err = await curl(f"{base}/api/v1/users/7")
            assert code == 0, err
            data = json.loads(out)
            assert data["id"] == "7"
            instances.append(data["instance"])
        assert set(instances) == {"users-1", "users-2"}

        code, out, err = await curl(
            "-i",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data",
            '{"total": 12}',
            f"{base}/api/v1/orders",
        )
        assert code == 0, err
        assert out.startswith("HTTP/1.1 201 ")
        order = json.loads(out.partition("\r\n\r\n")[2])
        assert order["order"] == {"total": 12}
        assert isinstance(order["id"], int)
        assert re.search(r"(?im)^x-request-id: [0-9a-f]{32}\r$", out)

        code, out, err = await curl(
            "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", f"{base}/api/v1/orders"
        )
        assert (code, out) == (0, "405")

        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert not await _port_in_use(8080)
        assert "gateway on http://127.0.0.1:8080" in log_path.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
