#!/usr/bin/env bash
# The project's test command (README "Test it"; .ci/run calls this script).
# Installs what the tests use on a fresh machine: Debian packages (curl for the
# e2e tests, redis-server for fleet-wide rate limits, etcd-server for the control
# plane's HA tests, nghttp2-client for h2load against the HTTP/2 listener) and the
# package with its
# test extras; then ruff, mypy and pytest; then the same pytest run again on the
# compiled build (scripts/build-compiled.sh: mypyc, gcc, into build/compiled) with
# MESHGATE_EXPECT_COMPILED=1, so that tests/conftest.py refuses to run unless the
# compiled modules are the ones imported. MESHGATE_SKIP_COMPILED=1 skips that second run.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -m pip install -q -e '.[test]'
python3 -m ruff check src tests bench examples
python3 -m mypy
python3 -m pytest -q -p no:cacheprovider "$@"
if [ "${MESHGATE_SKIP_COMPILED:-}" != 1 ]; then
  scripts/build-compiled.sh
  PYTHONPATH="$PWD/build/compiled" MESHGATE_EXPECT_COMPILED=1 \
    python3 -m pytest -q -p no:cacheprovider "$@"
fi
