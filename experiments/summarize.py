"""Summarise a folder of runs (metrics.json / prune_report.json) as a Markdown table.

    python experiments/summarize.py runs/engine-amazon-1024 [--save results/engine-amazon-1024]

`--save` copies each run's report (small JSON files, no weights) next to the table so the
results can be committed.
"""

import argparse
import json
import shutil
from pathlib import Path


def rows(root: Path):
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".partial")):
        if (d / "prune_report.json").is_file():
            r = json.loads((d / "prune_report.json").read_text())
            sp, pruned = r["sparsity"], r["params"]["pruned"]
            expected = sp["expected_at_end"]  # None without gates (fisher presets)
            expected = "-" if expected is None else f"{expected:.3f}"
            yield (
                d,
                "prune_report.json",
                (
                    f"| {d.name} | {r['preset']} | {r['test']['accuracy']:.4f} | "
                    f"{r['test']['macro_f1']:.4f} | {sp['target']} | {sp['achieved']:.4f} | "
                    f"{expected} | {pruned['total']:,} | {pruned['num_layers']}/"
                    f"{pruned['heads']}/{pruned['ffn_units']}/{pruned['hidden']} | "
                    f"{r['seconds']['total']:.0f} |"
                ),
            )
        elif (d / "metrics.json").is_file():
            m = json.loads((d / "metrics.json").read_text())
            yield (
                d,
                "metrics.json",
                (
                    f"| {d.name} | {m['method']} | {m['test']['accuracy']:.4f} | "
                    f"{m['test']['macro_f1']:.4f} | 0 | 0 | - | dense | - | "
                    f"{m['total_seconds']:.0f} |"
                ),
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()
    lines = [
        "| run | method | test acc | macro-F1 | target sparsity | achieved | expected at end "
        "| params | layers/heads/FFN units/hidden | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d, name, line in rows(args.root):
        lines.append(line)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(d / name, args.save / f"{d.name}.json")
            if (d / "predictions.npz").is_file():  # for paired bootstraps (compare.py)
                shutil.copyfile(d / "predictions.npz", args.save / f"{d.name}.predictions.npz")
    table = "\n".join(lines)
    print(table)
    if args.save:
        (args.save / "summary.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
