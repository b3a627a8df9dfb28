"""Distillation on unlabelled texts: each step, a batch of unlabelled texts beside the
labelled one, and the student's logits pulled to the dense teacher's by a temperature-softened
KL. The teacher is frozen, so its logits are given, computed once for all texts."""

from __future__ import annotations

from typing import Any

import torch

from tlprune.train.distill import logit_kl


def text_batch(collate: Any, texts: list[str]) -> dict:
    """A model input batch of texts without labels (the collator wants one; it is dropped)."""
    batch = collate([{"text": t, "label": 0} for t in texts])
    batch.pop("labels")
    return batch


class UnlabelledDistill:
    """`weight * KL_T(teacher || student)` on a fresh batch of unlabelled texts per call, in a
    seeded order of its own (the labelled loader's random stream is not touched)."""

    def __init__(
        self,
        teacher_logits: torch.Tensor,
        texts: list[str],
        collate: Any,
        batch_size: int,
        weight: float,
        temperature: float,
        seed: int,
    ):
        if len(teacher_logits) != len(texts):
            raise ValueError("one row of teacher logits per unlabelled text")
        self.texts, self.collate, self.logits = texts, collate, teacher_logits
        self.batch_size, self.weight, self.temperature = batch_size, weight, temperature
        self.gen = torch.Generator().manual_seed(seed)
        self._order: list[int] = []

    def _batch(self, idx) -> dict:
        return text_batch(self.collate, [self.texts[i] for i in idx])

    def _next(self) -> list[int]:
        if len(self._order) < self.batch_size:  # a new epoch over the texts
            self._order += torch.randperm(len(self.texts), generator=self.gen).tolist()
        take, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return take

    def __call__(self, model: Any) -> tuple[torch.Tensor, dict[str, float]]:
        idx = self._next()
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in self._batch(idx).items()}
        student = model(**batch).logits.float()
        kl = logit_kl(student, self.logits[idx].to(device), self.temperature)
        return self.weight * kl, {"distill/unlabelled_kl": kl.detach()}
