"""Interleaved latency of two models on the same inputs: medians over repeats, and ratios."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def _inputs(vocab: int, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.inference_mode()
def compare_latency(
    models: dict[str, Any],
    batch: int,
    seq: int,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """Median and spread of forward-pass seconds per model, runs interleaved round-robin so
    that machine noise hits every model alike."""
    if threads is not None:
        torch.set_num_threads(threads)
    vocab = min(m.config.vocab_size for m in models.values())
    inputs = _inputs(vocab, batch, seq)
    for m in models.values():
        m.eval()
        for _ in range(warmup):
            m(**inputs)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, m in models.items():
            t0 = time.perf_counter()
            m(**inputs)
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
