#!/usr/bin/env bash
# Build the optional compiled copy of meshgate: src/meshgate is copied to
# build/compiled/meshgate (git-ignored) and the hot-path modules listed in
# scripts/compile_hot.py are compiled there with mypyc (shipped with mypy, a test extra;
# needs a C compiler and the Python headers). src/ is never touched: the default install
# stays pure Python. Use the build by putting it first on the path:
#   PYTHONPATH=build/compiled meshgate gateway -c gateway.yaml
#   PYTHONPATH=build/compiled MESHGATE_EXPECT_COMPILED=1 python -m pytest tests/
# Options are passed to compile_hot.py (--jobs N, default 2). gcc's output goes to
# build/compiled-build.log.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
if ! python3 scripts/compile_hot.py "$@" >build/compiled-build.log 2>&1; then
  tail -n 40 build/compiled-build.log >&2
  echo "build-compiled.sh: failed, full log in build/compiled-build.log" >&2
  exit 1
fi
sed -n '/^compiled in /,$p' build/compiled-build.log
echo "build-compiled.sh: done in ${SECONDS} s"
