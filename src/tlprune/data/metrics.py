"""Classification metrics computed from logits and labels."""

from __future__ import annotations

import numpy as np


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_labels: int) -> dict:
    """Accuracy, macro-F1 and mean cross-entropy."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-logp[np.arange(len(labels)), labels].mean()) if len(labels) else float("nan")
    pred = logits.argmax(axis=1)
    f1s = []
    for c in range(num_labels):
        tp = np.sum((pred == c) & (labels == c))
        fp = np.sum((pred == c) & (labels != c))
        fn = np.sum((pred != c) & (labels == c))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "macro_f1": float(np.mean(f1s)),
        "loss": loss,
        "n": len(labels),
    }
