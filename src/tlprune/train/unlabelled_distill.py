"""Distillation on unlabelled texts: each step, a batch of unlabelled texts beside the
labelled one, and the student's logits pulled to the dense teacher's by a temperature-softened
KL. The teacher is frozen, so its logits are given, computed once for all texts. Optionally the
student's hidden states are pulled to the teacher's too, layer i to layer i (the retraining-free
small model keeps the teacher's depth and width): a two-class logit carries one number per
text, a layer's hidden states hundreds per token."""

from __future__ import annotations

from typing import Any

import torch

from tlprune.train.distill import logit_kl


def text_batch(collate: Any, texts: list[str]) -> dict:
    """A model input batch of texts without labels (the collator wants one; it is dropped)."""
    batch = collate([{"text": t, "label": 0} for t in texts])
    batch.pop("labels")
    return batch


def layer_mse(student: tuple, teacher: tuple, mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers of ||h_s - h_t||^2 / ||h_t||^2 on the real tokens of every layer's
    output (hidden_states[1:]; [0] is the embeddings, which both models share at the start):
    a relative error, so its weight means the same at any hidden-state scale."""
    if len(student) != len(teacher) or student[-1].shape != teacher[-1].shape:
        raise ValueError(
            "the layer loss matches layer i to layer i: the student needs the teacher's depth "
            f"and width (got {len(student) - 1} layers x {student[-1].shape[-1]} against "
            f"{len(teacher) - 1} x {teacher[-1].shape[-1]})"
        )
    keep = mask.unsqueeze(-1).to(student[-1].dtype)
    errs = [
        (((s.float() - t.float()) ** 2) * keep).sum() / ((t.float() ** 2) * keep).sum()
        for s, t in zip(student[1:], teacher[1:], strict=True)
    ]
    return torch.stack(errs).mean()


class UnlabelledDistill:
    """`weight * KL_T(teacher || student)` on a fresh batch of unlabelled texts per call, in a
    seeded order of its own (the labelled loader's random stream is not touched); with a
    `layer_weight` > 0 and the `teacher` module, `layer_weight * layer_mse` beside it (the
    teacher runs on the batch: its hidden states are too large to keep for every text)."""

    def __init__(
        self,
        teacher_logits: torch.Tensor,
        texts: list[str],
        collate: Any,
        batch_size: int,
        weight: float,
        temperature: float,
        seed: int,
        teacher: Any = None,
        layer_weight: float = 0.0,
    ):
        if len(teacher_logits) != len(texts):
            raise ValueError("one row of teacher logits per unlabelled text")
        self.texts, self.collate, self.logits = texts, collate, teacher_logits
        self.batch_size, self.weight, self.temperature = batch_size, weight, temperature
        self.gen = torch.Generator().manual_seed(seed)
        if layer_weight and teacher is None:
            raise ValueError("the layer loss needs the teacher module")
        self.teacher, self.layer_weight = teacher, layer_weight
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
        out = model(**batch, output_hidden_states=bool(self.layer_weight))
        kl = logit_kl(out.logits.float(), self.logits[idx].to(device), self.temperature)
        loss, parts = self.weight * kl, {"distill/unlabelled_kl": kl.detach()}
        if self.layer_weight:
            layer = layer_mse(
                out.hidden_states, self._teacher_states(batch, out), batch["attention_mask"]
            )
            loss = loss + self.layer_weight * layer
            parts["distill/unlabelled_layer"] = layer.detach()
        return loss, parts

    def _teacher_states(self, batch: dict, out: Any) -> tuple:
        """The teacher's hidden states on the batch, at the student's precision (Accelerate
        autocasts the student's forward only; in float32 the autocast is off)."""
        device = batch["input_ids"].device
        self.teacher.to(device).eval()
        dtype = out.hidden_states[-1].dtype
        half = dtype in (torch.float16, torch.bfloat16)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=half):
            return self.teacher(**batch, output_hidden_states=True).hidden_states
