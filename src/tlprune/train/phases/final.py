"""Surgery and final phase: the full-size model cut to the exact-budget masks (a genuinely
smaller model), fine-tuned on the budget, then its test predictions."""

from __future__ import annotations

import time

from tlprune.train.loop import train_classifier
from tlprune.train.phases.state import PruneRun


def final_phase(run: PruneRun) -> None:
    from tlprune.surgery import prune_model
    from tlprune.train.evaluate import predict

    cfg, acc = run.cfg, run.accelerator
    t0 = time.perf_counter()
    small = prune_model(acc.unwrap_model(run.model).cpu(), run.phase.masks.masks)
    train_dl, dev_dl, test_dl = run.loaders(4, cfg.prune.final)
    run.final = train_classifier(
        small, train_dl, dev_dl, cfg.prune.final, acc, run.log_path, "final"
    )
    run.small = acc.unwrap_model(small)
    run.seconds["final"] = time.perf_counter() - t0
    run.test = predict(run.small, acc.prepare(test_dl), acc, desc="test")
