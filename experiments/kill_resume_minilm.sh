#!/usr/bin/env bash
# A cofi run killed with SIGKILL at prune step 25 and resumed in a new process must end as the
# uninterrupted run (MiniLM, budget 64, 40 gate steps; TLPRUNE_KILL_AT is the test hook).
# Prints whether masks and weights are equal, and both runs' expected sparsity and dev loss.
cd "$(dirname "$0")/.."
ARGS="prune --preset cofi --model minilm --target vader-amazon --budget 64 --sparsity 0.8 --seed 3 prune.prune.max_steps=40 prune.checkpoint_every=10 prune.warm.max_steps=4 prune.final.max_steps=4 prune.prune.eval_every=10"
export OMP_NUM_THREADS=1
rm -rf runs/kill-resume; mkdir -p runs/kill-resume
python -m tlprune $ARGS --out runs/kill-resume/full > runs/kill-resume/full.log 2>&1
TLPRUNE_KILL_AT=prune:25 python -m tlprune $ARGS --out runs/kill-resume/killed > runs/kill-resume/killed.log 2>&1; echo "killed rc=$?"
python -m tlprune $ARGS --out runs/kill-resume/killed --resume > runs/kill-resume/resumed.log 2>&1; echo "resumed rc=$?"
python - <<'PY'
import json, torch
from safetensors.torch import load_file
a, b = (load_file(f"runs/kill-resume/{n}/masks.safetensors") for n in ("full", "killed"))
print("masks equal:", all(torch.equal(a[k], b[k]) for k in a), {k: int((a[k] != b[k]).sum()) for k in a})
wa, wb = (load_file(f"runs/kill-resume/{n}/model.safetensors") for n in ("full", "killed"))
print("weights equal:", all(torch.equal(wa[k], wb[k]) for k in wa))
for n in ("full", "killed"):
    r = json.load(open(f"runs/kill-resume/{n}/prune_report.json"))
    print(n, "expected at end", r["sparsity"]["expected_at_end"], "dev loss", r["dev"]["prune"]["loss"])
PY
