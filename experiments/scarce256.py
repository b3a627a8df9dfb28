"""Budget 256, sparsity 0.8 (and 0.6 for the retraining-free presets), seeds 0-2, on the three
vader targets: the dense fine-tune (also the Fisher presets' teacher), then `fisher` and
`fisher-ft` from that teacher, then `fisher-stilts` (auxiliary vader-movies, unlabelled: the
target's training texts) as shipped and with a layer floor, cofi with
`prune.constraint=shift` on the schedule of the transfer grid's cofi cells (300 gate steps,
round_hidden 1: results/transfer-amazon-256 holds their Lagrangian twins), then cofi at its
full preset schedule.

    python experiments/scarce256.py [--jobs 1] [--only REGEX] [--list]

Resumable (experiments/grid.py): finished cells are skipped, killed ones resume.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from grid import Cell, run_grid

TARGETS = ("vader-amazon", "vader-tweets", "vader-nyt")
SHORT = {"vader-amazon": "amazon", "vader-tweets": "tweets", "vader-nyt": "nyt"}


def cells(seeds: list[int], out: Path) -> list[Cell]:
    cs: list[Cell] = []
    common = ["--model", "minilm", "--budget", "256"]
    for target in TARGETS:  # the dense reference first: it is every Fisher cell's teacher
        for seed in seeds:
            args = ["finetune", *common, "--target", target, "--seed", str(seed)]
            cs.append(Cell(f"finetune-{SHORT[target]}-s{seed}", args))
    for target in TARGETS:
        for sparsity in ("0.8", "0.6"):
            for preset in ("fisher", "fisher-ft"):
                for seed in seeds:
                    teacher = out / f"finetune-{SHORT[target]}-s{seed}"
                    args = ["prune", "--preset", preset, *common, "--target", target]
                    args += ["--sparsity", sparsity, "--seed", str(seed), "--teacher", str(teacher)]
                    cs.append(Cell(f"{preset}-{SHORT[target]}-{sparsity}-s{seed}", args))
    for seed in seeds:  # the constraint by projection, on the transfer grid's cofi schedule
        args = ["prune", "--preset", "cofi", *common, "--target", "vader-amazon"]
        args += ["--sparsity", "0.8", "--seed", str(seed), "prune.constraint=shift"]
        args += ["prune.prune.max_steps=300", "prune.round_hidden=1"]
        cs.append(Cell(f"cofi-shift300-amazon-0.8-s{seed}", args))
    for seed in seeds:  # transfer through the dense model: STILTs teacher, Fisher masks, KL
        for target in TARGETS:
            args = ["prune", "--preset", "fisher-stilts", *common, "--target", target]
            args += ["--sparsity", "0.8", "--seed", str(seed)]
            args += ["--aux", "vader-movies", "--unlabelled", "target-train"]
            cs.append(Cell(f"fisher-stilts-{SHORT[target]}-0.8-s{seed}", args))
    # the same with every layer kept alive (fisher.layer_floor), then also scoring the labelled
    # texts only; targets outermost so that two jobs start on two seeds' auxiliary stages
    variants = {
        "fisher-stilts-floor": ["fisher.layer_floor=0.5"],
        "fisher-stilts-floor-lab": ["fisher.layer_floor=0.5", "fisher.score_unlabelled=false"],
    }
    for name, overrides in variants.items():
        for target in TARGETS:
            for seed in seeds:
                args = ["prune", "--preset", "fisher-stilts", *common, "--target", target]
                args += ["--sparsity", "0.8", "--seed", str(seed)]
                args += ["--aux", "vader-movies", "--unlabelled", "target-train", *overrides]
                cs.append(Cell(f"{name}-{SHORT[target]}-0.8-s{seed}", args))
    for target in TARGETS:
        for seed in seeds:
            args = ["prune", "--preset", "cofi", *common, "--target", target, "--sparsity", "0.8"]
            cs.append(Cell(f"cofi-{SHORT[target]}-0.8-s{seed}", [*args, "--seed", str(seed)]))
    return cs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/scarce256"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="cells at a time")
    ap.add_argument("--only", default=".", help="a regex of cell names to run")
    ap.add_argument("--list", action="store_true", help="print the cells and exit")
    args = ap.parse_args()
    todo = cells(args.seeds, args.out)
    if args.list:
        for c in todo:
            print(c.name, " ".join(c.args))
        return 0
    subprocess.run(
        [sys.executable, "-m", "tlprune", "data", "prepare", *TARGETS],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return 1 if run_grid(todo, args.out, args.jobs, args.only) else 0


if __name__ == "__main__":
    raise SystemExit(main())
