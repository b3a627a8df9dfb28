"""Distillation losses: logit KL and layerwise hidden-state MSE with dynamic layer matching.

Teacher layers are chosen from the depth (every other layer, the last always) instead of
CoFi's fixed {2, 5, 8, 11}; each is matched, in order, to the student layer of least MSE among
layers whose attention sublayer is open, through a learned linear map.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from tlprune.config import DistillConfig


def teacher_layers(num_layers: int) -> list[int]:
    """Every other layer counted back from the last (0-based); the last always included."""
    return sorted(range(num_layers - 1, -1, -2))


def logit_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by T^2."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


def match_layers(
    student_states: Mapping[int, torch.Tensor],
    teacher_states: list[torch.Tensor],
    open_layers: list[int],
    mask: torch.Tensor,
) -> tuple[torch.Tensor, list[int]]:
    """Match teacher states, in order, to distinct student layers of least MSE (increasing).

    `student_states` maps a student layer index to its state in the teacher's space. Each
    teacher layer leaves enough open student layers after its match for the teacher layers
    still to come; with fewer open student layers than teacher layers, the earliest teacher
    layers are dropped (the last one is always matched). Returns (mean loss, matched indices).
    """
    weight = mask.unsqueeze(-1).to(teacher_states[0].dtype)
    denom = weight.sum() * teacher_states[0].shape[-1]
    teacher_states = teacher_states[max(0, len(teacher_states) - len(open_layers)) :]
    total = teacher_states[0].new_zeros(()) if teacher_states else mask.new_zeros((), dtype=float)
    matched: list[int] = []
    pos = 0  # index into open_layers
    for k, t_state in enumerate(teacher_states):
        room = len(teacher_states) - k - 1  # open layers to keep for later teacher layers
        candidates = open_layers[pos : len(open_layers) - room]
        errs = torch.stack(
            [(((student_states[i] - t_state) ** 2) * weight).sum() / denom for i in candidates]
        )
        best = int(errs.detach().argmin())
        total = total + errs[best]
        matched.append(candidates[best])
        pos += best + 1
    return total / max(len(matched), 1), matched


class Distiller(nn.Module):
    """Combines CE, logit KL and layer MSE; owns the learned student->teacher linear map."""

    def __init__(
        self, cfg: DistillConfig, hidden: int, teacher_hidden: int, teacher_num_layers: int
    ):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(hidden, teacher_hidden)
        if hidden == teacher_hidden:
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(hidden))
                self.proj.bias.zero_()
        self.layers = teacher_layers(teacher_num_layers)

    def forward(
        self,
        student_logits: torch.Tensor,
        student_hidden: tuple[torch.Tensor, ...],
        teacher_logits: torch.Tensor,
        teacher_hidden: tuple[torch.Tensor, ...],
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
        open_layers: list[int],
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        out: dict[str, torch.Tensor] = {}
        loss = student_logits.new_zeros(())
        if cfg.ce_weight:
            out["ce"] = F.cross_entropy(student_logits, labels)
            loss = loss + cfg.ce_weight * out["ce"]
        if cfg.kl_weight:
            out["kl"] = logit_kl(student_logits, teacher_logits, cfg.temperature)
            loss = loss + cfg.kl_weight * out["kl"]
        if cfg.layer_weight:
            # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1]
            mapped = {i: self.proj(student_hidden[i + 1]) for i in open_layers}
            targets = [teacher_hidden[i + 1] for i in self.layers]
            out["layer"], _ = match_layers(mapped, targets, open_layers, attention_mask)
            loss = loss + cfg.layer_weight * out["layer"]
        out["loss"] = loss
        return out
