"""Pruned vs dense: parameters, MACs ratio and CPU latency ratio, measured side by side.

    python benchmarks/speed.py DENSE_DIR PRUNED_DIR [PRUNED_DIR ...] [--batch 32 --seq 128]

Runs are interleaved in one process with a fixed thread count, after warm-up; medians of
>= 10 repeats. Quote the ratios, not the absolute times (shared, noisy machines).
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from tlprune.bench import compare_latency, forward_macs
from tlprune.train.eval_job import load_any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dense")
    ap.add_argument("pruned", nargs="+")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from pathlib import Path

    models = {"dense": load_any(Path(args.dense))[0]}
    for p in args.pruned:
        models[Path(p).name] = load_any(Path(p))[0]
    timing = compare_latency(models, args.batch, args.seq, args.repeats, threads=args.threads)
    dense_macs = forward_macs(models["dense"].config, args.batch, args.seq)
    dense_t = timing["dense"]["median_s"]
    rows = []
    print(
        f"batch {args.batch} x {args.seq} tokens, {args.threads} threads, "
        f"{args.repeats} interleaved repeats, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    print("| model | params | MACs (G) | FLOPs ratio | median latency ratio (speedup) |")
    print("|---|---|---|---|---|")
    for name, m in models.items():
        macs = forward_macs(m.config, args.batch, args.seq)
        params = sum(p.numel() for p in m.parameters())
        row = {
            "model": name,
            "params": params,
            "macs": macs,
            "flops_ratio": dense_macs / macs,
            "speedup": dense_t / timing[name]["median_s"],
            **timing[name],
        }
        rows.append(row)
        print(
            f"| {name} | {params:,} | {macs / 1e9:.2f} | {row['flops_ratio']:.2f}x | "
            f"{row['speedup']:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
