"""Mean, std over seeds and paired bootstrap intervals between methods, from saved runs.

    python experiments/compare.py runs/issue4 [--baselines cofi finetune] [--save FILE.md]
    python experiments/compare.py experiments/results/issue4   # the committed copies

Runs are folders named METHOD-sSEED (e.g. joint-movies-s0) holding predictions.npz. The
paired interval of the accuracy difference A - B resamples test examples within each seed
(the same examples for both methods) and averages over the seeds both methods have.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

NAME = re.compile(r"^(?P<method>.+)-s(?P<seed>\d+)$")


def load(root: Path) -> dict[str, dict[int, np.ndarray]]:
    """method -> seed -> per-example correctness (0/1) on the test split."""
    out: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for d in sorted(root.iterdir()):
        # a runs folder (NAME/predictions.npz) or a results folder (NAME.predictions.npz)
        stem = d.name.removesuffix(".predictions.npz")
        m = NAME.match(stem)
        f = d / "predictions.npz" if d.is_dir() else d
        if m and f.is_file() and (d.is_dir() or d.name.endswith(".predictions.npz")):
            p = np.load(f)
            correct = (p["test_logits"].argmax(-1) == p["test_labels"]).astype(np.float64)
            out[m["method"]][int(m["seed"])] = correct
    return out


def paired(a: dict[int, np.ndarray], b: dict[int, np.ndarray], n: int = 2000, seed: int = 0):
    """Mean difference and 95% interval over the seeds both have, resampling examples."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    rng = np.random.default_rng(seed)
    diffs = [a[s] - b[s] for s in seeds]
    m = len(diffs[0])
    boot = np.zeros(n)
    for d in diffs:
        idx = rng.integers(0, m, size=(n, m))
        boot += d[idx].mean(1)
    boot /= len(seeds)
    point = float(np.mean([d.mean() for d in diffs]))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return point, float(lo), float(hi), seeds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--baselines", nargs="+", default=["cofi", "finetune"])
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()
    runs = load(args.root)
    lines = [
        "| method | seeds | test acc mean | std | "
        + " | ".join(f"vs {b}: diff [95% CI] (seeds)" for b in args.baselines)
        + " |",
        "|---|---|---|---|" + "---|" * len(args.baselines),
    ]
    for method in sorted(runs):
        accs = [c.mean() for _, c in sorted(runs[method].items())]
        std = f"{np.std(accs, ddof=1) * 100:.2f}" if len(accs) > 1 else "-"
        cells = []
        for b in args.baselines:
            r = paired(runs[method], runs.get(b, {})) if b != method else None
            cells.append(
                f"{r[0] * 100:+.2f} [{r[1] * 100:+.2f}, {r[2] * 100:+.2f}] ({len(r[3])})"
                if r
                else "-"
            )
        seeds = ",".join(str(s) for s in sorted(runs[method]))
        lines.append(
            f"| {method} | {seeds} | {np.mean(accs) * 100:.2f} | {std} | "
            + " | ".join(cells)
            + " |"
        )
    text = "\n".join(lines)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")


if __name__ == "__main__":
    main()
