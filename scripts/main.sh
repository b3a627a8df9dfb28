#!/usr/bin/env bash
# The main job on the bundled default, from a fresh machine: install, prepare data, run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0          # CPU build first (never an unpinned torch)
python3 -m pip install -q -e .
python3 -m tlprune data prepare vader-amazon vader-movies
# the transfer preset's default data: --aux vader-movies --unlabelled target-train
python3 -m tlprune prune --preset transfer --model minilm --target vader-amazon --budget 256 \
    --sparsity 0.8 --seed 0 --out runs/main --overwrite "$@"
echo
echo "References at the same budget and sparsity (committed runs, seeds 0-2, same test split;"
echo "every preset at its full schedule; results/full-schedule/report):"
awk '/^## vader-amazon, budget 256, sparsity 0.8$/ {on = 1; next} /^## / {on = 0}
    on && /^\|/ && (++n <= 2 || $2 ~ /^(finetune|cofi|fisher-ft|transfer)$/)' \
    results/full-schedule/report/report.md
