#!/usr/bin/env bash
# Engine grid: MiniLM on vader-amazon, budget 1024, seed 0: dense fine-tune vs cofi vs
# cofi-distill at sparsities 0.6 and 0.8. Resumable: finished runs are skipped, killed ones
# continue from their checkpoints. The dense run doubles as the distillation teacher.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/engine-amazon-1024}
SEED=${SEED:-0}
mkdir -p "$OUT"
run() {  # run NAME ARGS...: skip if done, resume if partial
  local name=$1; shift
  if [ -f "$OUT/$name/metrics.json" ] || [ -f "$OUT/$name/prune_report.json" ]; then return; fi
  local resume=()
  [ -d "$OUT/$name.partial" ] && resume=(--resume)
  python3 -m tlprune "$@" --out "$OUT/$name" "${resume[@]}" > "$OUT/$name.log" 2>&1 \
    || echo "FAILED: $name (see $OUT/$name.log)"
}
run dense-s$SEED finetune --model minilm --target vader-amazon --budget 1024 --seed $SEED
for sp in 0.8 0.6; do
  run cofi-$sp-s$SEED prune --preset cofi --model minilm --target vader-amazon --budget 1024 \
    --sparsity $sp --seed $SEED
  run cofi-distill-$sp-s$SEED prune --preset cofi-distill --model minilm --target vader-amazon \
    --budget 1024 --sparsity $sp --seed $SEED distill.teacher=$OUT/dense-s$SEED
done
python3 experiments/summarize.py "$OUT" --save experiments/results/$(basename "$OUT")
