"""Evaluation of a classifier on a dataloader: metrics plus per-example predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tlprune.data.metrics import classification_metrics


@torch.no_grad()
def predict(model: Any, loader: Any, accelerator: Any = None, desc: str | None = None):
    """Run the model over `loader`; return (logits, labels) as numpy arrays, gathered across
    processes when an Accelerator is given."""
    from tqdm.auto import tqdm

    model.eval()
    logits, labels = [], []
    show = desc is not None and (accelerator is None or accelerator.is_local_main_process)
    for batch in tqdm(loader, desc=desc, disable=not show, leave=False):
        labels_t = batch.pop("labels")
        out = model(**batch).logits.float()
        if accelerator is not None:
            out, labels_t = accelerator.gather_for_metrics((out, labels_t))
        logits.append(out.cpu().numpy())
        labels.append(labels_t.cpu().numpy())
    if not logits:
        return np.zeros((0, 0)), np.zeros((0,), dtype=int)
    return np.concatenate(logits), np.concatenate(labels)


def evaluate(model: Any, loader: Any, num_labels: int, accelerator: Any = None, desc=None) -> dict:
    logits, labels = predict(model, loader, accelerator, desc)
    return classification_metrics(logits, labels, num_labels)


def save_predictions(path, logits: np.ndarray, labels: np.ndarray, budget: Any) -> None:
    """Per-example test logits and labels plus the budget's indices: what a paired bootstrap
    between methods needs (same seeds, budgets and test examples)."""
    np.savez_compressed(
        path,
        test_logits=logits.astype(np.float32),
        test_labels=labels,
        budget_train=budget.train,
        budget_dev=budget.dev,
    )
