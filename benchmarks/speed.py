"""The README's speed table in one command: every pruned model against its dense original,
in PyTorch eager, torch.compile and ONNX Runtime, batch 1 and 32 x 128 tokens.

    python benchmarks/speed.py [RUN_DIR ...] [--threads N] [--backends eager,compile,onnxruntime]
        [--save results/speed/speed]

RUN_DIR defaults to runs/speed-models/runs/cofi-150_sp{0.6,0.8,0.9}_s0 (made by
`tlprune study configs/studies/speed-models.yaml --out runs/speed-models`).
Each model is measured by `tlprune bench` logic: dense and pruned interleaved in one process,
medians of 10 repeats after warm-up; quote the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tlprune.bench import BenchConfig, bench
from tlprune.bench.run import write_json

DEFAULT = [Path(f"runs/speed-models/runs/cofi-150_sp{s}_s0") for s in ("0.6", "0.8", "0.9")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--backends", default="eager,compile,onnxruntime")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--save", type=Path, help="write PREFIX.json and PREFIX.md")
    args = ap.parse_args()
    cfg = BenchConfig(backends=args.backends.split(","), repeats=args.repeats, threads=args.threads)
    results = [bench(run, None, cfg) for run in args.runs]
    m = results[0]["machine"]
    lines = [
        f"{m['cpu']}, {m['cpus']} CPUs, {m['threads']} threads, torch {m['torch']}"
        f"{', onnxruntime ' + m['onnxruntime'] if 'onnxruntime' in m else ''}; dense and "
        f"pruned interleaved, medians of {args.repeats} repeats",
        "",
        "| model | params (dense / pruned) | backend | batch x tokens | FLOPs ratio | speedup "
        "| speedup / FLOPs ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for run, info in zip(args.runs, results, strict=True):
        p = info["params"]
        for r in info["results"]:
            lines.append(
                f"| {run.name} | {p['dense'] / 1e6:.1f}M / {p['pruned'] / 1e6:.1f}M "
                f"| {r['backend']} | {r['batch']} x {r['tokens']} | {r['flops_ratio']:.2f}x "
                f"| {r['speedup']:.2f}x | {r['speedup_over_flops_ratio']:.2f} |"
            )
        for backend, why in info["skipped"].items():
            lines.append(f"| {run.name} | | {backend} | skipped: {why} | | | |")
    text = "\n".join(lines)
    print(text)
    if args.save:
        write_json(
            {"runs": [str(r) for r in args.runs], "results": results},
            args.save.with_suffix(".json"),
        )
        args.save.with_suffix(".md").write_text(text + "\n")
        print(json.dumps({"saved": str(args.save)}))


if __name__ == "__main__":
    main()
