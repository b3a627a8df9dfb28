"""Gate log-alphas started from importance instead of all at one value.

Started equal, every gate is pushed by the constraint at the same pace, and with a few hundred
steps on a few hundred examples the task loss does not separate them before the target is
reached: measured, the gates' binary masks kept dev at the majority class through the whole
prune phase. Started from the dense model's Fisher scores (per parameter, ranked over heads
and FFN units together), the constraint's common shift closes the least important units
first, and the gates then refine that order with the task loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tlprune.gates.size import UnitSizes


def log_alphas_from_fisher(
    diag: dict[str, Tensor], sizes: UnitSizes, high: float, span: float
) -> dict[str, Tensor]:
    """Head and FFN-unit log-alphas linear in the rank of Fisher score per parameter: the most
    important unit at `high`, the least at `high - span`."""
    head = diag["head"].double().flatten() / sizes.head_params()
    unit = diag["ffn_unit"].double().flatten() / sizes.ffn_unit_params()
    density = torch.cat([head, unit])
    rank = density.argsort(stable=True).argsort().double() / max(1, density.numel() - 1)
    values = (high - span + span * rank).float()
    n_head = head.numel()
    return {
        "head": values[:n_head].reshape(diag["head"].shape),
        "ffn_unit": values[n_head:].reshape(diag["ffn_unit"].shape),
    }


@torch.no_grad()
def set_log_alphas(gates, values: dict[str, Tensor]) -> None:
    """Copy `values` into the gate set's log-alphas of the same kinds (then the clamp)."""
    cfg = gates.config
    for kind, v in values.items():
        gates.log_alpha[kind].copy_(v.clamp(cfg.log_alpha_min, cfg.log_alpha_max))
