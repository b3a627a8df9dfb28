#!/usr/bin/env bash
# The issue-4 grid (kept for the commands quoted in earlier notes): experiments/issue4_transfer.py.
# JOBS cells at a time, ONLY a regex of cell names, SEEDS, STEPS, OUT as before.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2086  # SEEDS is a list
exec python3 experiments/issue4_transfer.py --jobs "${JOBS:-1}" --only "${ONLY:-.}" \
  --seeds ${SEEDS:-0 1 2} --steps "${STEPS:-300}" --out "${OUT:-runs/issue4}"
