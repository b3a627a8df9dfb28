#!/usr/bin/env bash
# The main job on the bundled default, from a fresh machine: install, prepare data, run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0          # CPU build first (never an unpinned torch)
python3 -m pip install -q -e .
python3 -m tlprune data prepare vader-amazon
python3 -m tlprune prune --preset cofi --model minilm --target vader-amazon --budget 256 \
    --sparsity 0.8 --seed 0 --out runs/main --overwrite "$@"
