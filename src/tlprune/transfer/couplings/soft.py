"""Soft coupling, preset soft: two copies of the encoder (and gates), tied by beta * ||theta_T -
theta_A||^2 over the weight groups and gamma * ||P_T - P_A||^2 over the mask kinds."""

from __future__ import annotations

from typing import Any

from tlprune.config.transfer import TransferConfig
from tlprune.errors import ConfigError
from tlprune.transfer.couplings.base import refuse_adapt, refuse_reprune


class Soft:
    name = "soft"
    aux_stage = False
    branch_in_prune = True
    ties_weights = False
    penalty = True

    def check(self, tc: TransferConfig, prune: Any) -> None:
        refuse_adapt(tc)
        refuse_reprune(tc)
        if tc.masks and not tc.aux_prune:
            raise ConfigError(
                "soft mask coupling (transfer.masks) needs gates on the auxiliary branch: "
                "set transfer.aux_prune: true, or transfer.masks: []"
            )
