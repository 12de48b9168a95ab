#!/usr/bin/env bash
# The project's test command (README "Test it"; .ci/run calls this script).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
python3 -m ruff check src tests bench examples
python3 -m mypy
python3 -m pytest -q -p no:cacheprovider "$@"
