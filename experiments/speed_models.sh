#!/usr/bin/env bash
# Pruned MiniLMs at sparsities 0.6 / 0.8 / 0.9 for the speed table (benchmarks/speed.py).
# Speed depends only on the kept shapes, so phases are shortened (STEPS gate steps, 1 warm, 2
# final epochs); accuracy of these models is not reported. Resumable like the other harnesses.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/speed}
STEPS=${STEPS:-300}  # gate steps
EXTRA=${EXTRA:-}  # more overrides, e.g. EXTRA=prune.round_hidden=32 OUT=runs/speed32
mkdir -p "$OUT"
python3 -m tlprune data prepare vader-amazon > /dev/null
for sp in 0.6 0.8 0.9; do
  name=cofi-$sp
  [ -f "$OUT/$name/prune_report.json" ] && continue
  resume=()
  [ -d "$OUT/$name.partial" ] && resume=(--resume)
  python3 -m tlprune prune --preset cofi --model minilm --target vader-amazon --budget 256 \
    --sparsity $sp --seed 0 --out "$OUT/$name" "${resume[@]}" prune.prune.max_steps=$STEPS \
    prune.warm.epochs=1 prune.final.epochs=2 $EXTRA > "$OUT/$name.log" 2>&1 \
    || echo "FAILED: $name (see $OUT/$name.log)"
done
