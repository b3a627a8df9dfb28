"""When, adaptively: use the auxiliary gradient only while it helps the target.

Following gradient-similarity weighting (Du et al., 2018, "Adapting auxiliary losses using
gradient similarity"): each step the target's gradient g_T and the auxiliary tasks' gradient
g_A on the shared weights are compared on the training batch, and g_A is scaled by
max(0, cos(g_T, g_A)) on the shared weights and on the shared gates (the cosine is taken over
the weights only). The two backward passes together cost about one backward of the summed
loss (their graphs meet only in the shared gate samples), plus a copy of the shared
gradients.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    return [p.grad.detach().clone() if p.grad is not None else None for p in params]


def backward_adapted(
    accelerator: Any,
    main: torch.Tensor,
    aux: torch.Tensor,
    shared: list[torch.nn.Parameter],
    also: list[torch.nn.Parameter] = (),
    retain: bool = True,
) -> float:
    """Backpropagate `main` and `aux`; rescale aux's part of the gradients of `shared` and
    `also` by max(0, cos), the cosine between the two gradients on `shared` (0 when either
    is zero), and return the cosine. Gradients already accumulated (earlier micro-batches)
    are kept and left out of the cosine. Other parameters (heads, own gates) keep both.
    `retain`: the graphs share intermediate tensors (gate samples), so the first backward
    must keep them."""
    params = [*shared, *also]
    earlier = _grads(params) if any(p.grad is not None for p in params) else [None] * len(params)
    accelerator.backward(main, retain_graph=retain)
    after_main = _grads(params)
    accelerator.backward(aux)
    dots = []  # per shared tensor: g_T.g_A, g_T.g_T, g_A.g_A of this micro-batch
    for p, prev, mid in zip(shared, earlier, after_main, strict=False):
        if p.grad is None:
            continue
        g_a = (p.grad - mid if mid is not None else p.grad).flatten()
        if mid is None:
            g_t = torch.zeros_like(g_a)
        else:
            g_t = (mid - prev if prev is not None else mid).flatten()
        dots.append(torch.stack([g_t.dot(g_a), g_t.dot(g_t), g_a.dot(g_a)]).double())
    dot, norm_t, norm_a = torch.stack(dots).sum(0).tolist() if dots else (0.0, 0.0, 0.0)
    cos = dot / math.sqrt(norm_t * norm_a) if norm_t > 0 and norm_a > 0 else 0.0
    factor = max(0.0, cos)
    with torch.no_grad():
        for p, mid in zip(params, after_main, strict=True):
            if p.grad is None:
                continue
            if mid is None:
                p.grad.mul_(factor)
            else:  # mid + factor * (grad - mid)
                p.grad.sub_(mid).mul_(factor).add_(mid)
    return cos
