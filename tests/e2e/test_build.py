"""The gateway processes the e2e tests start run the same build as the tests: the
compiled one in scripts/test.sh's second run (PYTHONPATH=build/compiled, possibly
relative), the pure one otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import meshgate.io.server
from tests.e2e.conftest import subprocess_env


def test_subprocesses_import_the_tests_build(tmp_path: Path) -> None:
    code = "import meshgate.io.server as m; print(m.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(),
        cwd=tmp_path,  # as the gateway_factory's processes
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out).resolve() == Path(meshgate.io.server.__file__ or "").resolve()
