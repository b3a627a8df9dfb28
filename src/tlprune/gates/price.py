"""The constraint `price`: the projection sets the level of the gates, a multiplier sets the
price of sparsity that each gate weighs its task gradient against.

Projection alone (`shift`) keeps the expected sparsity on the target, but the gates then see
only the task loss; Adam scales each gate's step to about its lr whatever the gradient's size,
so every kind of gate moves alike, whatever it costs in parameters, and the offset decides the
rest. The Lagrangian's term gives each gate its cost (d s_hat / d log-alpha is proportional
to the parameters a gate removes), but its multipliers, learned by Adam while the gates lag,
wind up and carry the gates far past the target (0.89-0.93 against 0.80 at cofi's schedule).

Here the gates minimise ``lambda1 * (s_hat - t)`` with lambda1 held fixed, then the offset
projects them onto the next step's target. lambda1 ascends on the *drift*: how far that gate
step alone moved the expected sparsity from the level it started at, measured before the
projection (the ramp's rise is the projection's work, not the price's). A step that opens the
gates on balance (drift < 0: the task outweighs the price) lowers lambda1, which pushes
towards closing; one that closes them raises it. lambda1 settles where the gates' own steps
leave the level in place on average, the multiplier of the constrained problem; its wind-up
moves the price, never the level.
"""

from __future__ import annotations

from torch import Tensor

from tlprune.gates.lagrangian import Lagrangian


def price_term(lagrangian: Lagrangian, s_hat: Tensor, target: float, drift: Tensor) -> Tensor:
    """The gates' gradient is lambda1 * d s_hat; lambda1's own gradient is `drift` (how far the
    last gate step alone moved the level, before its projection). lambda2 stays in the graph
    at zero weight (DDP needs every parameter used) and so never moves."""
    lam1 = lagrangian.lambda1
    return lam1.detach() * (s_hat - target) + lam1 * drift + 0 * lagrangian.lambda2
