"""When, adaptively: use the auxiliary gradient only while it helps the target.

Following gradient-similarity weighting (Du et al., 2018, "Adapting auxiliary losses using
gradient similarity"): each step the target's gradient g_T and the auxiliary tasks' gradient
g_A on the shared weights are compared, and g_A is scaled by max(0, cos(g_T, g_A)). The two
backward passes together cost about one backward of the summed loss (their graphs meet only
in the shared gates), plus one copy of the shared weights' gradients.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def backward_adapted(
    accelerator: Any, main: torch.Tensor, aux: torch.Tensor, shared: list[torch.nn.Parameter]
) -> float:
    """Backpropagate `main` and `aux`, then rescale aux's part of the gradients of `shared` by
    max(0, cos); return the cosine (0 when either gradient is zero). Other parameters (heads,
    gates) keep both gradients as they are."""
    accelerator.backward(main, retain_graph=True)  # the gate samples serve both losses
    before = [p.grad.detach().clone() if p.grad is not None else None for p in shared]
    accelerator.backward(aux)
    dots = []  # per tensor: g_T.g_A, g_T.g_T, g_A.g_A (in place: p.grad holds g_A meanwhile)
    for p, g_t in zip(shared, before, strict=True):
        if p.grad is None:
            continue
        g_a = (p.grad.sub_(g_t) if g_t is not None else p.grad).flatten()
        flat = g_t.flatten() if g_t is not None else torch.zeros_like(g_a)
        dots.append(torch.stack([flat.dot(g_a), flat.dot(flat), g_a.dot(g_a)]).double())
    dot, norm_t, norm_a = torch.stack(dots).sum(0).tolist() if dots else (0.0, 0.0, 0.0)
    cos = dot / math.sqrt(norm_t * norm_a) if norm_t > 0 and norm_a > 0 else 0.0
    factor = max(0.0, cos)
    with torch.no_grad():
        for p, g_t in zip(shared, before, strict=True):
            if p.grad is not None:
                p.grad.mul_(factor)  # g_T + max(0, cos) g_A
                if g_t is not None:
                    p.grad.add_(g_t)
    return cos
