"""Constraint by projection: after each gate step, move every log-alpha by one common offset
so that the expected sparsity equals the target exactly.

The Lagrangian's multipliers, learned by an optimizer, lag and then overshoot: Adam moves
every log-alpha by about its lr per step whatever the constraint's gradient, so the gates
travel from their start in lockstep, cross the sigmoid's steep region together and close far
past the target (measured: 0.03 at step 93 while the target was 0.42, then 0.92 against 0.80).
The shift keeps what the task loss learned (the log-alphas' differences, for gates inside the
clamp range; a gate at a bound stays there) and decides only the common level, which
expected sparsity, being monotone in it, fixes by bisection.
"""

from __future__ import annotations

import torch

from tlprune.gates.hard_concrete import GateSet


@torch.no_grad()
def shift_to_target(gates: GateSet, target: float, tol: float = 1e-5, max_iter: int = 60) -> float:
    """Add the offset c to every log-alpha (then clamp) for which expected sparsity is the
    target within `tol`, or as close as the clamp allows; returns c."""
    cfg = gates.config
    lo_bound, hi_bound = cfg.log_alpha_min, cfg.log_alpha_max
    base = {k: v.detach().clone() for k, v in gates.log_alpha.items()}

    def sparsity(c: float) -> float:
        for k, v in gates.log_alpha.items():
            v.copy_((base[k] + c).clamp_(lo_bound, hi_bound))
        return float(gates.expected_sparsity())

    span = hi_bound - lo_bound
    lo, hi = -span, span  # c = -span closes everything as far as the clamp allows; +span opens
    if sparsity(0.0) == target:
        return 0.0
    c = 0.0
    for _ in range(max_iter):
        c = 0.5 * (lo + hi)
        s = sparsity(c)
        if abs(s - target) <= tol:
            break
        if s > target:  # too sparse: raise the log-alphas
            lo = c
        else:
            hi = c
    return c
