"""Print a Markdown table of the runs in a folder (metrics.json / prune_report.json)."""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1])
print("| run | test acc | macro-F1 | target sparsity | achieved | params | wall s |")
print("|---|---|---|---|---|---|---|")
for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".partial")):
    if (d / "prune_report.json").is_file():
        r = json.loads((d / "prune_report.json").read_text())
        sp = r["sparsity"]
        print(
            f"| {d.name} | {r['test']['accuracy']:.4f} | {r['test']['macro_f1']:.4f} | "
            f"{sp['target']} | {sp['achieved']:.4f} | {r['params']['pruned']['total']:,} | "
            f"{r['seconds']['total']:.0f} |"
        )
    elif (d / "metrics.json").is_file():
        m = json.loads((d / "metrics.json").read_text())
        print(
            f"| {d.name} | {m['test']['accuracy']:.4f} | {m['test']['macro_f1']:.4f} | 0 | 0 | "
            f"dense | {m['total_seconds']:.0f} |"
        )
