"""Hard-concrete gates, expected size, the sparsity Lagrangian and exact-budget final masks.

Gate kinds and shapes (any subset may be enabled; a missing kind is always open), for L layers,
H heads, FFN size f and hidden size d: head [L, H], mha [L], ffn_unit [L, f], ffn [L],
hidden [d].
"""

from __future__ import annotations

from tlprune.gates.hard_concrete import GateConfig, GateSet
from tlprune.gates.lagrangian import (
    Lagrangian,
    TargetSchedule,
    check_sparsity,
    make_gate_optimizers,
)
from tlprune.gates.masks import FinalMasks, final_masks
from tlprune.gates.size import (
    KINDS,
    GateConfigError,
    UnitSizes,
    exact_size,
    exact_sparsity,
    expected_size,
    expected_sparsity,
    size_breakdown,
)

__all__ = [
    "KINDS",
    "FinalMasks",
    "GateConfig",
    "GateConfigError",
    "GateSet",
    "Lagrangian",
    "TargetSchedule",
    "UnitSizes",
    "check_sparsity",
    "exact_size",
    "exact_sparsity",
    "expected_size",
    "expected_sparsity",
    "final_masks",
    "make_gate_optimizers",
    "size_breakdown",
]
