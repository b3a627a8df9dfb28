#!/usr/bin/env bash
# The default test run, from a fresh machine: install what the tests need, lint, test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0          # CPU build first (never an unpinned torch)
python3 -m pip install -q -e ".[test]"
python3 -m ruff check src tests benchmarks examples
python3 -m pytest "$@"
