"""The sparsity constraint: Lagrangian, target schedule and the gate/lambda optimizers.

    L_c = lambda1 * (s_hat - t) + lambda2 * (s_hat - t)^2

The gates minimise L_c and the lambdas maximise it (gradient ascent: their own AdamW with
``maximize=True``). Neither log-alphas nor lambdas get weight decay.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tlprune.gates.size import GateConfigError

log = logging.getLogger(__name__)


class Lagrangian(nn.Module):
    """lambda1 * (s_hat - t) + lambda2 * (s_hat - t)^2 with learned lambdas (init 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.zeros(()))
        self.lambda2 = nn.Parameter(torch.zeros(()))

    def forward(self, s_hat: Tensor, target: float | Tensor) -> Tensor:
        gap = s_hat - target
        return self.lambda1 * gap + self.lambda2 * gap * gap


def make_gate_optimizers(
    gates: nn.Module | Iterable[Tensor],
    lagrangian: Lagrangian | Iterable[Tensor],
    lr: float = 1e-2,
    lambda_lr: float | None = None,
) -> tuple[torch.optim.AdamW, torch.optim.AdamW]:
    """(gate optimizer, lambda optimizer): AdamW, weight decay 0; the second maximises.

    `lambda_lr` defaults to `lr` (CoFi uses 1e-2 for both). Step both after each backward of
    a loss that includes `lagrangian(s_hat, t)`, then call `gates.clamp_()`.
    """
    params = list(gates.parameters() if isinstance(gates, nn.Module) else gates)
    if lr <= 0 or (lambda_lr is not None and lambda_lr <= 0):
        raise GateConfigError(f"gate and lambda learning rates must be positive, got {lr}")
    gate_opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    lambdas = lagrangian.parameters() if isinstance(lagrangian, nn.Module) else lagrangian
    lambda_opt = torch.optim.AdamW(
        list(lambdas),
        lr=lr if lambda_lr is None else lambda_lr,
        weight_decay=0.0,
        maximize=True,
    )
    return gate_opt, lambda_opt


@dataclass(frozen=True)
class TargetSchedule:
    """Target sparsity at an optimizer step: `initial` until `start_step`, a linear ramp to
    `final` over `warmup_steps`, then `final` (reached at step start_step + warmup_steps).

    CoFi ramps from `initial` = 0. Starting at the gates' initial expected sparsity (0.42 for
    init log-alpha 0 with all five kinds) avoids a first stretch where the target lies below
    the gates' own sparsity: there the multipliers learn to open gates, and their momentum
    delays and then overshoots the real ramp (measured: benchmarks/target_ramp.py).
    """

    final: float
    warmup_steps: int
    start_step: int = 0
    initial: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.final < 1.0 and 0.0 <= self.initial < 1.0):
            raise GateConfigError(
                f"target sparsity must be in [0, 1), got {self.initial} -> {self.final}"
            )
        if self.warmup_steps < 0 or self.start_step < 0:
            raise GateConfigError(
                f"warmup_steps and start_step must be >= 0, got "
                f"{self.warmup_steps} and {self.start_step}"
            )

    def __call__(self, step: int) -> float:
        done = step - self.start_step
        if done < 0:
            return self.initial
        if self.warmup_steps == 0:
            return self.final
        return self.initial + (self.final - self.initial) * min(1.0, done / self.warmup_steps)


def check_sparsity(s_hat: float | Tensor, target: float, tol: float = 0.02) -> bool:
    """Log s_hat against the target; warn (and return False) when they differ by more than `tol`
    (on small data the constraint can fail to converge, CoFi issue #55)."""
    if isinstance(s_hat, Tensor):
        s_hat = s_hat.detach().item()
    gap = abs(float(s_hat) - float(target))
    if gap > tol:
        log.warning(
            "expected sparsity %.4f misses the target %.4f by %.4f (> %.2f): the constraint has "
            "not converged; prune longer or raise the gate/lambda learning rate",
            s_hat,
            target,
            gap,
            tol,
        )
        return False
    log.info("expected sparsity %.4f, target %.4f", s_hat, target)
    return True
