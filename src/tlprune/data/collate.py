"""Tokenising collator and truncation statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ClassificationCollator:
    """Tokenise a list of {text[, text_pair], label} rows into a padded batch (`label_key`
    "value": float targets, for a regression auxiliary)."""

    tokenizer: Any
    max_length: int
    label_key: str = "label"

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [r["text"] for r in rows]
        pairs = [r["text_pair"] for r in rows] if "text_pair" in rows[0] else None
        batch = self.tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        dtype = torch.long if self.label_key == "label" else torch.float32
        batch["labels"] = torch.tensor([r[self.label_key] for r in rows], dtype=dtype)
        return dict(batch)


def truncated_fraction(tokenizer: Any, ds: Any, max_length: int) -> float:
    """Fraction of rows whose tokenised length exceeds `max_length` (reported, not hidden)."""
    if len(ds) == 0:
        return 0.0
    pairs = ds["text_pair"] if "text_pair" in ds.column_names else None
    enc = tokenizer(list(ds["text"]), pairs, truncation=False, add_special_tokens=True)
    return sum(len(ids) > max_length for ids in enc["input_ids"]) / len(ds)
