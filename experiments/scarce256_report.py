"""Tables of the budget-256 grid (experiments/scarce256.py): per target and method, dev and
test accuracy over seeds, paired differences to the dense fine-tune and to cofi (Student-t
interval over seeds per target, and pooled over targets; bootstrap over test examples within
seed), achieved and end-of-phase expected sparsity, wall time.

    python experiments/scarce256_report.py runs/scarce256 --save results/scarce256

`--save` copies each run's report and test predictions (small files, no weights) beside the
table so that it can be rebuilt from the committed copies:
    python experiments/scarce256_report.py results/scarce256/runs
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

NAME = re.compile(
    r"^(?P<method>.+?)-(?P<target>amazon|tweets|nyt)(?:-(?P<sp>0\.\d+))?-s(?P<seed>\d+)$"
)
# cofi300: the transfer grid's cofi cells (300 gate steps, round_hidden 1), copied in as the
# cofi reference at sparsity 0.8 on vader-amazon
BASELINES = ("finetune", "cofi300-0.8")


def load(root: Path) -> dict:
    """(target, method) -> seed -> {dev, test, correct, achieved, expected, seconds}."""
    out: dict = defaultdict(dict)
    for d in sorted(root.iterdir()):
        stem = d.name.removesuffix(".json") if d.is_file() else d.name
        m = NAME.match(stem)
        if not m:
            continue
        if d.is_dir():
            report = next(
                (d / f for f in ("prune_report.json", "metrics.json") if (d / f).is_file()), None
            )
            preds = d / "predictions.npz"
        else:
            report, preds = d, d.with_name(f"{stem}.predictions.npz")
        if report is None or not preds.is_file():
            continue
        r = json.loads(report.read_text())
        p = np.load(preds)
        method = m["method"] + (f"-{m['sp']}" if m["sp"] else "")
        sp = r.get("sparsity", {})
        out[(m["target"], method)][int(m["seed"])] = {
            "dev": r["dev"].get("final", r["dev"])["accuracy"],
            "test": r["test"]["accuracy"],
            "correct": (p["test_logits"].argmax(-1) == p["test_labels"]).astype(float),
            "achieved": sp.get("achieved"),
            "expected": sp.get("expected_at_end"),
            "seconds": r.get("seconds", {}).get("total", r.get("total_seconds")),
            "dir": d,
            "report": report,
            "preds": preds,
        }
    return out


def t_interval(diffs: list[float]) -> str:
    """Mean and 95% Student-t interval of paired differences (points)."""
    x = 100 * np.asarray(diffs)
    if len(x) < 2:
        return f"{x.mean():+.1f} (n=1)"
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return f"{x.mean():+.1f} [{lo:+.1f}, {hi:+.1f}] (n={len(x)})"


def bootstrap(a: dict, b: dict, seeds: list[int], n: int = 2000) -> str:
    """Paired bootstrap over test examples within each seed, averaged over seeds."""
    rng = np.random.default_rng(0)
    draws = np.zeros(n)
    for s in seeds:
        d = a[s]["correct"] - b[s]["correct"]
        idx = rng.integers(0, len(d), (n, len(d)))
        draws += d[idx].mean(1)
    draws *= 100 / len(seeds)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return f"[{lo:+.1f}, {hi:+.1f}]"


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(runs: dict) -> str:
    targets = sorted({t for t, _ in runs}, key=["amazon", "tweets", "nyt"].index)
    methods = sorted({m for _, m in runs})
    lines = []
    for target in targets:
        lines += [
            f"### vader-{target}",
            "",
            "| method | seeds | dev % | test % mean ± std | vs finetune: t 95% | vs finetune: "
            "bootstrap | vs cofi (300 gate steps): t 95% | achieved sparsity | expected at end "
            "| minutes |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method in methods:
            cell = runs.get((target, method))
            if not cell:
                continue
            seeds = sorted(cell)
            dev = np.mean([cell[s]["dev"] for s in seeds]) * 100
            test = np.array([cell[s]["test"] for s in seeds]) * 100
            std = f" ± {test.std(ddof=1):.1f}" if len(test) > 1 else ""
            cols = []
            for base in BASELINES:
                ref = runs.get((target, base), {})
                common = [s for s in seeds if s in ref]
                mismatched = base != "finetune" and not method.endswith("-0.8")  # other sparsity
                if method == base or not common or mismatched:
                    cols += ["-", "-"] if base == "finetune" else ["-"]
                    continue
                diffs = [cell[s]["test"] - ref[s]["test"] for s in common]
                cols.append(t_interval(diffs))
                if base == "finetune":
                    cols.append(bootstrap(cell, ref, common))
            ach = [cell[s]["achieved"] for s in seeds if cell[s]["achieved"] is not None]
            exp = [cell[s]["expected"] for s in seeds if cell[s]["expected"] is not None]
            mins = np.mean([cell[s]["seconds"] for s in seeds]) / 60
            lines.append(
                f"| {method} | {','.join(map(str, seeds))} | {dev:.1f} | {test.mean():.1f}{std} | "
                + " | ".join(cols)
                + f" | {fmt(np.mean(ach) if ach else None, '.3f')} | "
                + f"{', '.join(f'{e:.3f}' for e in exp) if exp else '-'} | {mins:.1f} |"
            )
        lines.append("")
    lines += ["### pooled over targets (paired by target and seed)", ""]
    lines += ["| method | pairs | dev % | test % | vs finetune: t 95% | vs cofi: t 95% |"]
    lines += ["|---|---|---|---|---|---|"]
    for method in methods:
        cells = {t: runs[(t, method)] for t in targets if (t, method) in runs}
        devs = [c[s]["dev"] for c in cells.values() for s in c]
        tests = [c[s]["test"] for c in cells.values() for s in c]
        cols = []
        for base in BASELINES:
            diffs = [
                cells[t][s]["test"] - runs[(t, base)][s]["test"]
                for t in cells
                for s in cells[t]
                if (t, base) in runs and s in runs[(t, base)] and method != base
            ]
            if base != "finetune" and not method.endswith("-0.8"):
                diffs = []
            cols.append(t_interval(diffs) if diffs else "-")
        lines.append(
            f"| {method} | {len(tests)} | {100 * np.mean(devs):.1f} | {100 * np.mean(tests):.1f} | "
            + " | ".join(cols)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--save", type=Path, help="copy reports and predictions here, with the table")
    ap.add_argument("--target", help="only this target (amazon, tweets, nyt)")
    ap.add_argument("--methods", nargs="+", help="only these methods (e.g. finetune cofi300-0.8)")
    args = ap.parse_args()
    runs = {
        k: v
        for k, v in load(args.root).items()
        if (args.target is None or k[0] == args.target)
        and (args.methods is None or k[1] in args.methods)
    }
    text = table(runs)
    print(text)
    if args.save:
        dst = args.save / "runs"
        dst.mkdir(parents=True, exist_ok=True)
        for cell in runs.values():
            for c in cell.values():
                name = c["dir"].name if c["dir"].is_dir() else c["report"].stem
                shutil.copyfile(c["report"], dst / f"{name}.json")
                shutil.copyfile(c["preds"], dst / f"{name}.predictions.npz")
        (args.save / "summary.md").write_text(text)


if __name__ == "__main__":
    main()
