"""Distillation losses: logit KL and layerwise hidden-state MSE with dynamic layer matching.

Teacher layers are chosen from the depth (every other layer, the last always) instead of
CoFi's fixed {2, 5, 8, 11}; each is matched, in order, to the student layer of least MSE among
layers whose attention sublayer is open, through a learned linear map.
"""

from __future__ import annotations

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
    student_states: list[torch.Tensor],
    teacher_states: list[torch.Tensor],
    open_layers: list[int],
    mask: torch.Tensor,
) -> tuple[torch.Tensor, list[int]]:
    """Match each teacher state, in order, to a distinct later student layer of least MSE.

    `student_states` are already mapped into the teacher's space; returns (loss, matched).
    Greedy and monotone, as CoFi's dynamic matching: a teacher layer may only use student
    layers after the one its predecessor used.
    """
    weight = mask.unsqueeze(-1).to(student_states[0].dtype)
    denom = weight.sum() * student_states[0].shape[-1]
    total = student_states[0].new_zeros(())
    matched: list[int] = []
    start = 0
    for t_state in teacher_states:
        candidates = [i for i in open_layers if i >= start]
        if not candidates:
            break
        with torch.no_grad():
            errs = torch.stack(
                [(((student_states[i] - t_state) ** 2) * weight).sum() for i in candidates]
            )
        best = candidates[int(errs.argmin())]
        total = total + (((student_states[best] - t_state) ** 2) * weight).sum() / denom
        matched.append(best)
        start = best + 1
    return total, matched


class Distiller(nn.Module):
    """Combines CE, logit KL and layer MSE; owns the learned student->teacher linear map."""

    def __init__(self, cfg: DistillConfig, hidden: int, teacher_num_layers: int):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(hidden, hidden)
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
            mapped = [self.proj(h) for h in student_hidden[1:]]
            targets = [teacher_hidden[i + 1] for i in self.layers]
            out["layer"], _ = match_layers(mapped, targets, open_layers, attention_mask)
            loss = loss + cfg.layer_weight * out["layer"]
        out["loss"] = loss
        return out
