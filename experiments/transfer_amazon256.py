"""Transfer grid: vader-amazon, budget 256, sparsity 0.8, seeds 0-2; auxiliary
vader-movies (labelled) or MLM on all the target's training texts (mlm:target-train).

    python experiments/transfer_amazon256.py [--jobs 2] [--only REGEX] [--seeds 0 1 2]

Methods: finetune (dense), cofi, stilts, joint, soft, sequential; then joint with the
auxiliary in the warm fine-tune too (joint+warm) and with gradient-cosine weighting
(joint+adapt). Every pruning method runs the SAME shortened
schedule (300 gate steps; sequential's pruning on the auxiliary also 300) so that the grid fits
CPU time; `prune.round_hidden=1` keeps the cells comparable with the first ones (run before
the default became 32). Cells are ordered by information: seed 0 of every method first.
Resumable (experiments/grid.py). On a GPU, --jobs 8 runs the whole grid in minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from grid import Cell, run_grid

AUX = {"movies": "vader-movies", "mlm": "mlm:target-train"}


def cells(seeds: list[int], steps: int) -> list[Cell]:
    common = ["--model", "minilm", "--target", "vader-amazon", "--budget", "256"]
    pr = ["--sparsity", "0.8", f"prune.prune.max_steps={steps}", "prune.round_hidden=1"]
    out = []
    for seed in seeds:
        s = ["--seed", str(seed)]
        out.append(Cell(f"finetune-s{seed}", ["finetune", *common, *s]))
        out.append(Cell(f"cofi-s{seed}", ["prune", "--preset", "cofi", *common, *pr, *s]))
        for aux, spec in AUX.items():
            for method in ("stilts", "joint", "sequential", "soft"):
                extra = [f"transfer.aux_stage.max_steps={steps}"] if method == "sequential" else []
                args = ["prune", "--preset", method, *common, *pr, *s, "--aux", spec, *extra]
                out.append(Cell(f"{method}-{aux}-s{seed}", args))
    for seed in seeds:  # when: the auxiliary in the warm fine-tune too; adaptively
        for variant, extra in (
            ("warm", ["transfer.warm_alpha.value=1"]),
            ("adapt", ["transfer.adapt=cosine"]),
        ):
            args = ["prune", "--preset", "joint", *common, *pr, "--seed", str(seed)]
            args += ["--aux", AUX["movies"], *extra]
            out.append(Cell(f"joint+{variant}-movies-s{seed}", args))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/transfer-amazon-256"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="gate steps of every pruning method")
    ap.add_argument("--jobs", type=int, default=1, help="cells at a time")
    ap.add_argument("--only", default=".", help="a regex of cell names to run")
    ap.add_argument("--list", action="store_true", help="print the cells and exit")
    args = ap.parse_args()
    if args.list:
        for c in cells(args.seeds, args.steps):
            print(c.name, " ".join(c.args))
        return 0
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "tlprune", "data", "prepare", "vader-amazon", "vader-movies"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    failed = run_grid(cells(args.seeds, args.steps), args.out, args.jobs, args.only)
    results = root / "results" / args.out.name
    summarize = [sys.executable, str(root / "experiments" / "summarize.py"), str(args.out)]
    subprocess.run([*summarize, "--save", str(results)], check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
