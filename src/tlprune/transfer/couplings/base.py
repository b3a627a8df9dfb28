"""What a coupling is: the parts of a run it adds, the terms of its branch, its own checks."""

from __future__ import annotations

from typing import Any, Protocol

from tlprune.config.transfer import TransferConfig
from tlprune.errors import ConfigError


class Coupling(Protocol):
    """How the target and its auxiliary tasks are coupled (`transfer.coupling`)."""

    name: str
    aux_stage: bool  # the auxiliary branch trains alone before the target (train/aux_stage.py)
    branch_in_prune: bool  # a branch trains beside the target in the prune phase
    ties_weights: bool  # the shared weight groups are one tensor in both branches
    penalty: bool  # beta/gamma tie two copies (weights, mask probabilities)

    def check(self, tc: TransferConfig, prune: Any) -> None:
        """Refuse settings this coupling would silently ignore or cannot honour."""


def _on(w: Any) -> bool:
    return w.value > 0 or w.end > 0


def refuse_penalties(tc: TransferConfig) -> None:
    if _on(tc.beta) or _on(tc.gamma):
        raise ConfigError("transfer.beta and transfer.gamma act only with coupling soft")
    if _on(tc.warm_beta):
        raise ConfigError("transfer.warm_beta acts only with coupling soft")


def refuse_warm(tc: TransferConfig) -> None:
    if _on(tc.warm_alpha) or _on(tc.warm_beta):
        raise ConfigError(
            "transfer.warm_alpha/warm_beta act with coupling shared or soft (sequential "
            "trains the auxiliary before, in transfer.aux_stage): set them to 0"
        )


def refuse_adapt(tc: TransferConfig) -> None:
    if tc.adapt != "none":
        raise ConfigError(
            "transfer.adapt scales the auxiliary gradient on shared weights: it needs "
            "coupling shared (e.g. --preset joint) and weight groups in transfer.weights"
        )


def refuse_reprune(tc: TransferConfig) -> None:
    if tc.variant == "reprune":
        raise ConfigError(
            "variant reprune needs coupling sequential, aux_prune: true and the gate kinds "
            "to carry in transfer.masks"
        )
