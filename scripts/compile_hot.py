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
MANIFEST = BUILD_DIR / "COMPILED_MODULES.txt"

# The request path, chosen by measurement (docs/performance.md, "Compiled build").
HOT_MODULES = (
    "core/router.py",
    "http/messages.py",
    "io/flow.py",
    "io/server.py",
    "io/upstream.py",
    "pipeline/proxy.py",
    "pipeline/app.py",
)


def copy_package() -> None:
    """A fresh copy of src/meshgate in build/compiled (old extensions removed)."""
    if BUILD_DIR.exists():
        shutil.rmtree(BUILD_DIR)
    BUILD_DIR.mkdir(parents=True)
    shutil.copytree(
        SRC_PKG,
        BUILD_DIR / "meshgate",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.pyc"),
    )


def compile_modules(jobs: int) -> list[Path]:
    from mypyc.build import mypycify
    from setuptools import setup

    paths = [f"meshgate/{module}" for module in HOT_MODULES]
    os.chdir(BUILD_DIR)
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
    shutil.rmtree(BUILD_DIR / "temp", ignore_errors=True)
    shutil.rmtree(BUILD_DIR / "build", ignore_errors=True)
    return sorted(BUILD_DIR.rglob("*.so"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel C compiles (default 2)")
    parser.add_argument("--list", action="store_true", help="print the module list and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(HOT_MODULES))
        return 0
    started = time.monotonic()
    copy_package()
    libraries = compile_modules(args.jobs)
    print(f"compiled in {time.monotonic() - started:.0f} s into {BUILD_DIR}:")
    names = []
    for module in HOT_MODULES:
        name = "meshgate." + module.removesuffix(".py").replace("/", ".")
        stem = BUILD_DIR / "meshgate" / module.removesuffix(".py")
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
        if lib.parent == BUILD_DIR:
            print(f"  runtime: {lib.name}")
    MANIFEST.write_text("".join(f"{name}\n" for name in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
