"""Compile meshgate's hot-path modules with mypyc, in a copy of the package.

Run by scripts/build-compiled.sh; not part of the installed package. The copy lives in
build/compiled/meshgate (git-ignored); src/ is never touched, so the default install stays
pure Python. Each listed module gets a C extension next to its .py (the extension is what
``import`` picks), and mypyc's shared runtime library (``*__mypyc*.so``) lands in
build/compiled, the root of that copy.

Usage: python scripts/compile_hot.py [--jobs N] [--list]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SRC_PKG = REPO_ROOT / "src" / "meshgate"
BUILD_DIR = REPO_ROOT / "build" / "compiled"
# Written last, listing the compiled modules: tests/conftest.py checks with it (when
# MESHGATE_EXPECT_COMPILED=1) that each of them is imported from its extension.
MANIFEST_NAME = "COMPILED_MODULES.txt"

# The modules a proxied request runs through (docs/performance.md, "Compiled build"):
# every one of them that mypyc compiles and with which the whole suite passes.
HOT_MODULES = (
    # server side: protocol, request/response types, framing, body streams, timers
    "io/dispatch.py",
    "http/dates.py",
    "io/flow.py",
    "io/server.py",
    "io/timers.py",
    "http/messages.py",
    "http/framing.py",
    "http/stream.py",
    # routing and the route's chain
    "core/router.py",
    "pipeline/app.py",
    "pipeline/runtime.py",
    "pipeline/compose.py",
    "pipeline/context.py",
    "pipeline/proxy.py",
    # upstream side: cluster, balancer, connection pool, per-upstream stats
    "upstream/cluster.py",
    "core/balancer.py",
    "io/upstream.py",
    "observability/metrics.py",
    # an in-process rate limit on the route (issue 4: its cost against the bare route)
    "core/ratelimit.py",
    "pipeline/ratelimit.py",
)
# Left interpreted, on the same path:
# - core/retry.py: RetryPolicy.build/backoff_s check their int/float arguments at run
#   time (config values, e.g. 1.5 or True for max_retries) and answer with RetryError
#   naming the value; compiled, mypyc's own argument checks come first (TypeError for
#   a float or a str, True taken as 1), so those errors change. It also crashes mypyc
#   (a required keyword-only parameter after defaulted ones in RetryPolicy.build).
#   core/resources.py too (ResourceLimits.build; its tests also pass strings, which
#   no annotation short of ``object`` lets through). core/ratelimit.py had the same
#   problem: its counts are typed ``int | float``, which mypyc passes on as they are.
# - pipeline/builtins.py: its middleware are loaded like plugins, and compiled
#   functions have no __qualname__ (plugin loading names the stages with it: 48 errors
#   in tests/pipeline) nor pass inspect.iscoroutinefunction.
# - http/errors.py: every HTTPError subclass only overrides the status/reason class
#   attributes, which a native class would turn into instance defaults (see
#   upstream/cluster.NoHealthyUpstream, kept a Python class for that reason).
# HTTP/2 (io/h2server.py, io/h2client.py) and the optional stages (auth, cache, access
# log, tracing) were not tried.


def copy_package(out: Path) -> None:
    """A fresh copy of src/meshgate in ``out`` (old extensions removed)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(
        SRC_PKG,
        out / "meshgate",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.pyc"),
    )


def compile_modules(out: Path, modules: list[str], jobs: int, keep_c: bool) -> list[Path]:
    from mypyc.build import mypycify
    from setuptools import setup

    paths = [f"meshgate/{module}" for module in modules]
    os.chdir(out)
    # mypy's options for the whole type check mypyc does (it follows every import);
    # pyproject's [tool.mypy] is not read from here, so the relevant flags are given.
    extensions = mypycify(
        ["--ignore-missing-imports", "--python-version", "3.11", *paths],
        opt_level="3",
        multi_file=jobs > 1,
    )
    setup(
        name="meshgate-compiled",
        ext_modules=extensions,
        script_args=["build_ext", "--inplace", "--build-temp", "temp", f"-j{jobs}"],
    )
    shutil.rmtree(out / "temp", ignore_errors=True)
    if not keep_c:
        shutil.rmtree(out / "build", ignore_errors=True)
    return sorted(out.rglob("*.so"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel C compiles (default 2)")
    parser.add_argument("--list", action="store_true", help="print the module list and exit")
    parser.add_argument(
        "--out", type=Path, default=BUILD_DIR, help=f"build directory (default {BUILD_DIR})"
    )
    parser.add_argument(
        "--modules",
        help="comma-separated paths under meshgate/ to compile instead of the list here "
        "(to try a module set)",
    )
    parser.add_argument(
        "--keep-c",
        action="store_true",
        help="keep the generated C in <out>/build (to read what a line compiled to)",
    )
    args = parser.parse_args()
    modules = args.modules.split(",") if args.modules else list(HOT_MODULES)
    if args.list:
        print("\n".join(modules))
        return 0
    out = args.out.resolve()
    started = time.monotonic()
    copy_package(out)
    libraries = compile_modules(out, modules, args.jobs, args.keep_c)
    print(f"compiled in {time.monotonic() - started:.0f} s into {out}:")
    names = []
    for module in modules:
        name = "meshgate." + module.removesuffix(".py").replace("/", ".")
        stem = out / "meshgate" / module.removesuffix(".py")
        built = [
            lib
            for lib in libraries
            if lib.parent == stem.parent and lib.name.startswith(stem.name + ".")
        ]
        print(f"  {name}: {built[0].name if built else 'MISSING'}")
        if not built:
            return 1
        names.append(name)
    for lib in libraries:
        if lib.parent == out:
            print(f"  runtime: {lib.name}")
    (out / MANIFEST_NAME).write_text("".join(f"{name}\n" for name in names))
    return 0


if __name__ == "__main__":
    status = main()
    # Skip the interpreter's teardown of mypy's build state (~17 s here): every file is
    # written and closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
