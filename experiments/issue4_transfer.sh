#!/usr/bin/env bash
# Issue 4 measurement: vader-amazon, budget 256, sparsity 0.8, seeds 0-2; auxiliary
# vader-movies (labelled) or MLM on all the target's training texts (mlm:target-train).
# Methods: finetune (dense), cofi, stilts, joint, soft, sequential.
# Every pruning method runs the SAME shortened schedule (300 gate steps; sequential's pruning
# on the auxiliary also 300) so that the grid fits CPU time; see experiments/results/issue4.
# Resumable: finished cells are skipped, killed ones continue from their checkpoints. Cells
# run in order of information: seed 0 of every method first, then seeds 1 and 2.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/issue4}
SEEDS=${SEEDS:-"0 1 2"}
STEPS=${STEPS:-300}
ONLY=${ONLY:-.}  # a regex of cell names: run only those (a second worker takes other cells)
mkdir -p "$OUT"
python3 -m tlprune data prepare vader-amazon vader-movies > /dev/null
run() {  # run NAME ARGS...: skip if done, resume if partial
  local name=$1; shift
  [[ $name =~ $ONLY ]] || return 0
  if [ -f "$OUT/$name/metrics.json" ] || [ -f "$OUT/$name/prune_report.json" ]; then return; fi
  local resume=()
  [ -d "$OUT/$name.partial" ] && resume=(--resume)
  echo "$(date -u +%H:%M:%S) $name"
  python3 -m tlprune "$@" --out "$OUT/$name" "${resume[@]}" > "$OUT/$name.log" 2>&1 \
    || echo "FAILED: $name (see $OUT/$name.log)"
}
common=(--model minilm --target vader-amazon --budget 256)
# round_hidden=1: the grid started before the default became 32; keep its cells comparable
pr=(--sparsity 0.8 prune.prune.max_steps=$STEPS prune.round_hidden=1)
for seed in $SEEDS; do
  run finetune-s$seed finetune "${common[@]}" --seed $seed
  run cofi-s$seed prune --preset cofi "${common[@]}" "${pr[@]}" --seed $seed
  for aux in movies mlm; do
    spec=vader-movies; [ $aux = mlm ] && spec=mlm:target-train
    run stilts-$aux-s$seed prune --preset stilts "${common[@]}" "${pr[@]}" --seed $seed --aux $spec
    run joint-$aux-s$seed prune --preset joint "${common[@]}" "${pr[@]}" --seed $seed --aux $spec
    run sequential-$aux-s$seed prune --preset sequential "${common[@]}" "${pr[@]}" --seed $seed \
      --aux $spec transfer.aux_stage.max_steps=$STEPS
    run soft-$aux-s$seed prune --preset soft "${common[@]}" "${pr[@]}" --seed $seed --aux $spec
  done
done
# When: joint with the auxiliary in the warm fine-tune too (after the issue's grid)
for seed in $SEEDS; do
  run joint+warm-movies-s$seed prune --preset joint "${common[@]}" "${pr[@]}" --seed $seed \
    --aux vader-movies transfer.warm_alpha.value=1
done
python3 experiments/summarize.py "$OUT" --save experiments/results/$(basename "$OUT")
