"""Does rounding the kept hidden width to a multiple pay? Pruned shapes from saved runs, as
they are and with the hidden width rounded down, against the dense model, interleaved.

    python benchmarks/round_hidden.py RUN_DIR [RUN_DIR ...] [--multiples 8 16 32 --threads 1]

Each RUN_DIR is a `tlprune prune` output (its masks.safetensors). The rounded variants are
rebuilt from the dense MiniLM with the same masks minus the last hidden dims: speed depends
on the shapes only, so their weights do not matter here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from tlprune.arch import from_hf
from tlprune.bench import compare_latency, forward_macs
from tlprune.bench.run import base_model_of
from tlprune.models import load_classifier
from tlprune.surgery import prune_model


def rounded(masks: dict, multiple: int) -> dict:
    out = dict(masks)
    hidden = masks["hidden"].clone()
    width = int(hidden.sum())
    drop = width % multiple
    if drop:
        kept = hidden.nonzero().flatten()
        hidden[kept[-drop:]] = 0
    out["hidden"] = hidden
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--multiples", nargs="+", type=int, default=[8, 16, 32])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    base = base_model_of(args.runs[0]) or "minilm"
    dense = from_hf(load_classifier(base, ["a", "b"])).eval()
    models = {"dense": dense}
    for run in args.runs:
        masks = load_file(run / "masks.safetensors")
        models[f"{run.name} as is"] = prune_model(dense, masks).eval()
        for m in args.multiples:
            models[f"{run.name} /{m}"] = prune_model(dense, rounded(masks, m)).eval()
    timing = compare_latency(models, args.batch, args.tokens, args.repeats, threads=args.threads)
    dense_macs = forward_macs(dense.config, args.batch, args.tokens)
    print(
        f"{base}, batch {args.batch} x {args.tokens}, {args.threads} threads, eager, medians of "
        f"{args.repeats} interleaved repeats"
    )
    print("| model | hidden | FLOPs ratio | speedup | speedup / FLOPs ratio |")
    print("|---|---|---|---|---|")
    for name, m in models.items():
        ratio = dense_macs / forward_macs(m.config, args.batch, args.tokens)
        speed = timing["dense"]["median_s"] / timing[name]["median_s"]
        print(
            f"| {name} | {m.config.hidden_size} | {ratio:.2f}x | {speed:.2f}x | "
            f"{speed / ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
