"""Prunable size of an encoder under gates: per-unit parameter counts, expected and exact size.

Gate kinds and shapes (the contract with the modelling code), for L layers, H heads of size
d_h, hidden size d and FFN size f:

    head [L, H]    mha [L]    ffn_unit [L, f]    ffn [L]    hidden [d]

A gate dict may hold any subset of the kinds: a missing kind is always open. A head carries
4*d_h*d_kept weights (its Q, K, V columns and O rows) and 3*d_h biases (Q, K, V); an FFN unit
2*d_kept weights (a column of W1, a row of W2) and 1 bias (b1), where d_kept is the number of
kept hidden dimensions (d without hidden gates). b_O, b2, LayerNorms and embeddings are not
counted (docs/method.md, prunable size). A head counts only when its mha gate is open too, an
FFN unit only when its ffn gate is open.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tlprune.errors import ConfigError

KINDS: tuple[str, ...] = ("head", "mha", "ffn_unit", "ffn", "hidden")


class GateConfigError(ConfigError, ValueError):
    """An invalid gate setting (kind, clamp, temperature, target sparsity)."""


@dataclass(frozen=True)
class UnitSizes:
    """The prunable structure of an encoder: layers, heads, head size, hidden and FFN size."""

    num_layers: int
    num_heads: int
    head_size: int
    hidden: int
    ffn: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_heads", "head_size", "hidden", "ffn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UnitSizes.{name} must be a positive integer, got {value!r}")

    def shape(self, kind: str) -> tuple[int, ...]:
        """The gate shape of `kind`."""
        shapes = {
            "head": (self.num_layers, self.num_heads),
            "mha": (self.num_layers,),
            "ffn_unit": (self.num_layers, self.ffn),
            "ffn": (self.num_layers,),
            "hidden": (self.hidden,),
        }
        if kind not in shapes:
            raise ValueError(f"unknown gate kind {kind!r}; valid kinds: {list(KINDS)}")
        return shapes[kind]

    def head_params(self, kept_hidden: int | None = None) -> int:
        """Parameters one head carries at `kept_hidden` dims (default: all)."""
        d = self.hidden if kept_hidden is None else kept_hidden
        return 4 * self.head_size * d + 3 * self.head_size

    def ffn_unit_params(self, kept_hidden: int | None = None) -> int:
        """Parameters one FFN unit carries at `kept_hidden` dims (default: all)."""
        d = self.hidden if kept_hidden is None else kept_hidden
        return 2 * d + 1

    @property
    def full_size(self) -> int:
        """Prunable size with every gate open (sparsity 0)."""
        heads = self.num_layers * self.num_heads * self.head_params()
        return heads + self.num_layers * self.ffn * self.ffn_unit_params()


def check_gates(gates: Mapping[str, Tensor], sizes: UnitSizes) -> None:
    """Raise ValueError on an unknown kind or a tensor of the wrong shape."""
    for kind, value in gates.items():
        expected = sizes.shape(kind)
        if tuple(value.shape) != expected:
            raise ValueError(f"gate {kind!r} has shape {tuple(value.shape)}, expected {expected}")


def _get(gates: Mapping[str, Tensor], kind: str, sizes: UnitSizes, like: Tensor) -> Tensor:
    if kind in gates:
        return gates[kind].to(like.dtype)
    return torch.ones(sizes.shape(kind), dtype=like.dtype, device=like.device)


def _like(gates: Mapping[str, Tensor]) -> Tensor:
    for value in gates.values():
        return torch.zeros((), dtype=torch.float64, device=value.device)
    return torch.zeros((), dtype=torch.float64)


def _parts(gates: Mapping[str, Tensor], sizes: UnitSizes) -> dict[str, Tensor]:
    """Per-layer effective head and FFN unit counts and the kept hidden width (all float64)."""
    check_gates(gates, sizes)
    like = _like(gates)
    heads = (_get(gates, "head", sizes, like) * _get(gates, "mha", sizes, like)[:, None]).sum(1)
    units = (_get(gates, "ffn_unit", sizes, like) * _get(gates, "ffn", sizes, like)[:, None]).sum(1)
    d_kept = _get(gates, "hidden", sizes, like).sum()
    d_h = sizes.head_size
    return {
        "heads": heads,  # [L]
        "ffn_units": units,  # [L]
        "hidden": d_kept,
        "mha_size": heads * (4 * d_h * d_kept + 3 * d_h),
        "ffn_size": units * (2 * d_kept + 1),
    }


def expected_size(keep_probs: Mapping[str, Tensor], sizes: UnitSizes) -> Tensor:
    """E[prunable size] under independent gates (CoFi): differentiable, float64 scalar.

    Heads count p_head * p_mha * (4*d_h*E[d_kept] + 3*d_h), FFN units
    p_unit * p_ffn * (2*E[d_kept] + 1), with E[d_kept] = sum of the hidden keep probabilities.
    On binary keep probabilities it equals `exact_size`.
    """
    parts = _parts(keep_probs, sizes)
    return parts["mha_size"].sum() + parts["ffn_size"].sum()


def expected_sparsity(keep_probs: Mapping[str, Tensor], sizes: UnitSizes) -> Tensor:
    """s_hat = 1 - E[size] / full_size (differentiable)."""
    return 1.0 - expected_size(keep_probs, sizes) / sizes.full_size


def exact_size(masks: Mapping[str, Tensor], sizes: UnitSizes) -> int:
    """Prunable size kept by binary masks (an exact integer)."""
    for kind, mask in masks.items():
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"mask {kind!r} is not binary (0/1)")
    parts = _parts({k: v.detach() for k, v in masks.items()}, sizes)
    return round(float(parts["mha_size"].sum() + parts["ffn_size"].sum()))


def exact_sparsity(masks: Mapping[str, Tensor], sizes: UnitSizes) -> float:
    """1 - exact_size / full_size."""
    return 1.0 - exact_size(masks, sizes) / sizes.full_size


def size_breakdown(gates: Mapping[str, Tensor], sizes: UnitSizes) -> dict[str, Any]:
    """Per-kind and per-layer (expected or exact) sizes as plain numbers, for reports.

    Works on keep probabilities (expected counts) and on binary masks (exact counts).
    """
    parts = _parts({k: v.detach() for k, v in gates.items()}, sizes)
    mha, ffn = parts["mha_size"], parts["ffn_size"]
    total = float(mha.sum() + ffn.sum())
    layers = [
        {
            "layer": layer,
            "heads": float(parts["heads"][layer]),
            "mha_size": float(mha[layer]),
            "ffn_units": float(parts["ffn_units"][layer]),
            "ffn_size": float(ffn[layer]),
        }
        for layer in range(sizes.num_layers)
    ]
    return {
        "full_size": sizes.full_size,
        "size": total,
        "sparsity": 1.0 - total / sizes.full_size,
        "hidden": float(parts["hidden"]),
        "heads": float(parts["heads"].sum()),
        "ffn_units": float(parts["ffn_units"].sum()),
        "mha_size": float(mha.sum()),
        "ffn_size": float(ffn.sum()),
        "layers": layers,
    }
