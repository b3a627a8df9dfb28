"""Mean, std over seeds and paired bootstrap intervals between methods, from saved runs.

    python experiments/compare.py runs/transfer-amazon-256 [--baselines cofi] [--save FILE.md]
    python experiments/compare.py results/transfer-amazon-256 --plot FILE.png  # committed copies

Runs are folders named METHOD-sSEED (e.g. joint-movies-s0) holding predictions.npz. Two paired
intervals of the accuracy difference A - B (same seed = same budget draw and test examples):
over seeds, the mean of the per-seed differences with a Student-t 95% interval (needs two
seeds; the spread that matters for "does A beat B"); and over examples, a bootstrap that
resamples test examples within each seed (test-set noise only). The dev column (the budget's
51-example dev split, after the final fine-tune) is what a choice between methods may use:
the test split is never used for selection.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

NAME = re.compile(r"^(?P<method>.+)-s(?P<seed>\d+)$")
# two-sided 95% Student-t quantiles by degrees of freedom (from standard tables)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


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


def dev_accuracy(root: Path) -> dict[str, dict[int, float]]:
    """method -> seed -> accuracy on the budget's dev split (what selection may look at)."""
    import json

    out: dict[str, dict[int, float]] = defaultdict(dict)
    for f in sorted(root.glob("*-s*.json")) + sorted(root.glob("*-s*/*.json")):
        stem = f.stem if f.parent == root else f.parent.name
        m = NAME.match(stem)
        if not m or f.name not in (f"{stem}.json", "prune_report.json", "metrics.json"):
            continue
        r = json.loads(f.read_text())
        dev = r["dev"].get("final", r["dev"])  # prune report: after the final fine-tune
        out[m["method"]][int(m["seed"])] = dev["accuracy"]
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


def over_seeds(a: dict[int, np.ndarray], b: dict[int, np.ndarray]):
    """Mean per-seed accuracy difference and its t interval over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s].mean() - b[s].mean() for s in seeds])
    if len(d) < 2:
        return None
    half = T975.get(len(d) - 1, 1.96) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half), seeds


def _cell(r) -> str:
    if not r:
        return "-"
    return f"{r[0] * 100:+.2f} [{r[1] * 100:+.2f}, {r[2] * 100:+.2f}] ({len(r[3])})"


def table(runs: dict, baselines: list[str], dev: dict | None = None) -> str:
    dev = dev or {}
    head = ["method", "seeds", "dev acc mean", "test acc mean", "std"]
    head += [f"vs {b} over seeds: diff [t 95%] (n)" for b in baselines]
    head += [f"vs {b} over examples: diff [bootstrap 95%] (n)" for b in baselines]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in sorted(runs):
        accs = [c.mean() for _, c in sorted(runs[method].items())]
        std = f"{np.std(accs, ddof=1) * 100:.2f}" if len(accs) > 1 else "-"
        mine = runs[method]
        seeds = [over_seeds(mine, runs.get(b, {})) if b != method else None for b in baselines]
        exs = [paired(mine, runs.get(b, {})) if b != method else None for b in baselines]
        d = [dev.get(method, {}).get(s) for s in sorted(mine)]
        devs = f"{np.mean(d) * 100:.2f}" if d and None not in d else "-"
        row = [method, ",".join(str(s) for s in sorted(mine)), devs, f"{np.mean(accs) * 100:.2f}"]
        row.append(std)
        lines.append("| " + " | ".join(row + [_cell(r) for r in seeds + exs]) + " |")
    return "\n".join(lines)


def plot(runs: dict, baselines: list[str], path: Path) -> None:
    """Test accuracy per seed (light dots), mean +- std over seeds (dark diamond) per method;
    the baselines' means as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted(runs)
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(methods)), 4))
    for i, m in enumerate(methods):
        accs = [c.mean() * 100 for _, c in sorted(runs[m].items())]
        std = np.std(accs, ddof=1) if len(accs) > 1 else 0.0
        ax.errorbar(i + 0.15, np.mean(accs), yerr=std, fmt="D", color="#08306b", capsize=4)
        ax.scatter([i - 0.1] * len(accs), accs, color="#6baed6", zorder=3, s=16)
    for b, style in zip(baselines, ("--", ":"), strict=False):
        if b in runs:
            mean = np.mean([c.mean() * 100 for c in runs[b].values()])
            ax.axhline(mean, color="gray", linestyle=style, label=f"{b} mean")
    lows = [c.mean() * 100 for r in runs.values() for c in r.values()]
    ax.set_ylim(max(0, min(lows) - 5), min(100, max(lows) + 3))
    ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--baselines", nargs="+", default=["cofi", "finetune"])
    ap.add_argument("--save", type=Path)
    ap.add_argument("--plot", type=Path, help="write a PNG of accuracy per method and seed")
    args = ap.parse_args()
    runs = load(args.root)
    text = table(runs, args.baselines, dev_accuracy(args.root))
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")
    if args.plot:
        plot(runs, args.baselines, args.plot)


if __name__ == "__main__":
    main()
