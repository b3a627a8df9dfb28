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

from tlprune.config import GATE_KINDS
from tlprune.errors import ConfigError

PARTS = ("all", "embeddings", "attention", "ffn", "norm", "layers")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.([a-z_]+)\.")

Group = tuple[str, range | None]


def parse_weight_groups(names: list[str], num_layers: int | None) -> list[Group]:
    """Check group names (and ranges against `num_layers` when known)."""
    groups: list[Group] = []
    for name in names:
        part, _, span = name.partition("@")
        if part not in PARTS:
            raise ConfigError(f"unknown weight group {name!r}; parts are {list(PARTS)}")
        layers = None
        if span:
            m = _RANGE.match(span)
            if part in ("all", "embeddings") or m is None:
                raise ConfigError(
                    f"weight group {name!r}: a layer range is `part@A-B` (e.g. attention@0-2) "
                    "and applies to attention, ffn, norm and layers"
                )
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo or (num_layers is not None and hi >= num_layers):
                raise ConfigError(
                    f"weight group {name!r}: layers {lo}-{hi} are not within 0-"
                    f"{(num_layers or 1) - 1}"
                )
            layers = range(lo, hi + 1)
        groups.append((part, layers))
    return groups


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


def check_mask_kinds(kinds: list[str]) -> list[str]:
    """Expand `all` and reject unknown gate kinds."""
    if "all" in kinds:
        return list(GATE_KINDS)
    bad = [k for k in kinds if k not in GATE_KINDS]
    if bad:
        raise ConfigError(f"unknown mask group(s) {bad}; choose gate kinds {list(GATE_KINDS)}")
    return list(kinds)


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
