"""Interleaved timing of several callables on the same inputs: medians over repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def random_inputs(vocab: int, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Unpadded random token ids (never the special ids below 5) and a full attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int = 10, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Median, min and max seconds per call of each function, run round-robin after warm-up
    so that machine noise hits every function alike."""
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "repeats": len(ts),
        }
        for name, ts in times.items()
    }


@torch.inference_mode()
def compare_latency(
    models: dict[str, Any],
    batch: int,
    seq: int,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """Forward-pass seconds of PyTorch models on the same random batch, interleaved."""
    if threads is not None:
        torch.set_num_threads(threads)
    vocab = min(m.config.vocab_size for m in models.values())
    inputs = random_inputs(vocab, batch, seq)
    for m in models.values():
        m.eval()
    fns = {name: (lambda m=m: m(**inputs)) for name, m in models.items()}
    return time_interleaved(fns, repeats, warmup)
