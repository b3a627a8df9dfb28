"""Pruned units held at zero inside a dense-shaped model: the state between two steps of
gradual retraining-free pruning.

Zeroing a head's columns of W_O and an FFN unit's column of W2 removes that unit's contribution
exactly, so the dense-shaped model computes what the surgered one would (an emptied sublayer
too: surgery keeps its output bias and LayerNorm). Masking those columns' gradients keeps them
at zero under AdamW (zero gradient, zero moments, and weight decay of a zero weight is zero),
and the model keeps the uniform shapes the Fisher scores need.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _columns(model, masks: dict[str, Tensor]):
    """(weight, 0/1 column mask) of every layer's W_O and W2 under `masks`."""
    dh = model.config.head_size
    for i, layer in enumerate(model.tlprune.encoder.layers):
        yield layer.attention.output.weight, masks["head"][i].repeat_interleave(dh)
        yield layer.ffn.output.weight, masks["ffn_unit"][i]


@torch.no_grad()
def zero_pruned(model, masks: dict[str, Tensor]) -> None:
    """Set the pruned heads' columns of W_O and the pruned FFN units' columns of W2 to zero."""
    for weight, keep in _columns(model, masks):
        weight.mul_(keep.to(weight.device, weight.dtype)[None, :])


def hold_pruned(model, masks: dict[str, Tensor]) -> list:
    """Gradient hooks that zero the pruned columns' gradients (remove the handles after
    training); with `zero_pruned` first, the pruned units stay exactly zero."""
    handles = []
    for weight, keep in _columns(model, masks):
        col = keep.detach().clone()[None, :]
        handles.append(weight.register_hook(lambda g, col=col: g * col.to(g.device, g.dtype)))
    return handles
