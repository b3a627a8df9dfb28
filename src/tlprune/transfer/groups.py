"""What: named groups of encoder weights (W) and of gate kinds (M) that the branches share,
tie or copy.

Weight groups: `all`, `embeddings` (the tables), `attention`, `ffn`, `norm` (every LayerNorm),
`layers`; all but `all` and `embeddings` take a layer range: `attention@0-2`, `layers@5`.
Names are relative to the encoder (`TlpruneModel`), so task heads are never in a group.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from tlprune.config.transfer import check_mask_kinds, parse_weight_groups
from tlprune.errors import ConfigError

_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.([a-z_]+)\.")


def _in_group(name: str, part: str, layers: range | None) -> bool:
    m = _LAYER.match(name)
    layer, sub = (int(m.group(1)), m.group(2)) if m else (None, None)
    if layers is not None and (layer is None or layer not in layers):
        return False
    if part == "all":
        return True
    if part == "embeddings":
        return name.startswith("embeddings.") and name.endswith("_embeddings.weight")
    if part == "norm":
        return name.startswith("embeddings.norm.") or sub in ("attention_norm", "ffn_norm")
    if part == "layers":
        return layer is not None
    return sub == part  # attention, ffn


def select_weights(encoder: nn.Module, names: list[str]) -> list[str]:
    """Names of the encoder's parameters in the union of the groups `names`."""
    groups = parse_weight_groups(names, encoder.config.num_hidden_layers)
    return [
        n
        for n, _ in encoder.named_parameters()
        if any(_in_group(n, part, layers) for part, layers in groups)
    ]


@torch.no_grad()
def copy_weights(src: nn.Module, dst: nn.Module, names: list[str]) -> list[str]:
    """Copy the weights of groups `names` from encoder `src` into encoder `dst`; return the
    parameter names copied (nothing else changes)."""
    selected = select_weights(dst, names)
    src_params, dst_params = dict(src.named_parameters()), dict(dst.named_parameters())
    for n in selected:
        if src_params[n].shape != dst_params[n].shape:
            raise ConfigError(
                f"cannot copy {n}: shapes {src_params[n].shape} vs {dst_params[n].shape}"
            )
        dst_params[n].copy_(src_params[n])
    return selected


@torch.no_grad()
def copy_log_alphas(src, dst, kinds: list[str]) -> list[str]:
    """Copy the log-alphas of gate kinds `kinds` (that both GateSets have) from src to dst."""
    copied = []
    for kind in check_mask_kinds(kinds):
        if kind in src.log_alpha and kind in dst.log_alpha:
            dst.log_alpha[kind].copy_(src.log_alpha[kind])
            copied.append(kind)
    return copied
