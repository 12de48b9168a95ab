"""Suite-wide settings.

Under CI (CI=true, as `.ci/run` is run) hypothesis is derandomized: the same
examples every run, so a landing never depends on a lucky draw. Locally it
explores new examples each run (and keeps failures in .hypothesis/).
"""

from __future__ import annotations

import importlib
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _compiled_modules() -> tuple[str, list[str]]:
    """Where meshgate is imported from, and the compiled modules its build lists."""
    import meshgate

    root = Path(meshgate.__file__).resolve().parent.parent
    manifest = root / "COMPILED_MODULES.txt"
    if not manifest.is_file():
        return str(root), []
    return str(root), manifest.read_text().split()


def pytest_configure(config: pytest.Config) -> None:
    # PYTHONPATH entries made absolute, for the subprocesses the tests start in other
    # directories (gateways run in tmp_path): with PYTHONPATH=build/compiled as given
    # they would miss the build and import the editable install of src/ instead.
    path = os.environ.get("PYTHONPATH")
    if path:
        entries = path.split(os.pathsep)
        os.environ["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p else p for p in entries)
    # MESHGATE_EXPECT_COMPILED=1 (scripts/test.sh's run on build/compiled): fail at once
    # unless meshgate comes from the mypyc build and every module it compiled is imported
    # from its extension, so a run meant for the compiled build cannot test pure Python
    # (the editable install of src/ is on sys.path too, behind PYTHONPATH).
    if os.environ.get("MESHGATE_EXPECT_COMPILED") != "1":
        return
    root, names = _compiled_modules()
    if not names:
        raise pytest.UsageError(
            f"MESHGATE_EXPECT_COMPILED=1 but meshgate is imported from {root}, not a "
            "compiled build (run scripts/build-compiled.sh, PYTHONPATH=build/compiled)"
        )
    for name in names:
        module = importlib.import_module(name)
        origin = module.__file__ or ""
        if not origin.endswith(tuple(EXTENSION_SUFFIXES)):
            raise pytest.UsageError(
                f"MESHGATE_EXPECT_COMPILED=1 but {name} is imported from {origin}"
            )


def pytest_report_header(config: pytest.Config) -> str:
    root, names = _compiled_modules()
    if names:
        return f"meshgate: compiled build in {root} ({len(names)} modules: {', '.join(names)})"
    return f"meshgate: pure Python from {root}"
